"""DNS names as policy peers: FQDN selectors (toFQDNs, DNS rules) and the cache of what DNS
answered, which turns names into the addresses policy may allow."""
