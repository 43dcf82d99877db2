"""The node agent's L7 proxy: HTTP/1.1 rules, parsing, redaction and the transparent proxy that
connections selected by policy are redirected to.

- httprules: Cilium's `toPorts[].rules.http[]` (parse_http_rules -> HTTPRules.allows)
- httpmessage: request/response heads as the rules and flows see them
- redact: what of a message may go into flows
- httpflow: the L7 flows (REQUEST, RESPONSE) of a proxied connection
- upstream: the upstream leg, direct or from inside a pod's network namespace
- httpproxy: HTTPProxy (one connection at a time: handle) and serve (a listening socket)

Wiring it on a node:

    proxy = HTTPProxy(ProxyConfig(node_name=node), emit=flow_sink, describe=endpoint_of_ip)
    listener = await serve(
        listening_sock,                       # where the redirect sends connections
        original_dst_of,                      # accepted socket -> (ip, port) (may be async)
        proxy,
        rules_for=lambda client, dst: rules,  # HTTPRules, None, or a callable per request
        upstream_for=lambda client, dst: netns_upstream(pod_netns_of(client[0]), dst),
    )
    ...
    await listener.close()
"""
