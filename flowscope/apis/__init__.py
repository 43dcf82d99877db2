"""Cluster objects the kubectl way: manifests in, validation, kinds, selectors, the object store.

- documents: multi-document YAML/JSON from files, directories or stdin, with their origins
- kinds: the supported kinds (one registry; add a kind there)
- validation: schema (kubernetes-validate, strict) + the apiserver's semantic checks
- labels: label selectors (object and `-l` string forms)
- objectstore: ObjectStore (apply/delete/get/list/update/update_status/watch) on a KV
"""
