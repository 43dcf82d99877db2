"""The node agent's L7 proxy: HTTP/1.1 rules, parsing, redaction and the transparent proxy that
connections selected by policy are redirected to."""
