"""The cluster DNS: what CoreDNS's kubernetes plugin answers, served from the lab's DNS pods.

records (pure: Services/EndpointSlices -> answers), message (wire in, wire out), forward (names
outside the cluster domain to upstream resolvers), server (asyncio UDP/TCP on port 53 inside a
pod's namespace, fed by store mirrors), resolvconf (the file every pod sees as /etc/resolv.conf).
"""
