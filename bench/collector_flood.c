// bench.collector's event source: the datapath's own flow event (struct flow_event) into the
// datapath's own ring buffer and lost counter (the maps of probes/datapath.c, included), one
// event per run. The packet run through it carries the event's template; every event gets the
// time, and a source port and one of POD_SPREAD source addresses from a per-CPU count, so that
// the collector sees many flows between a few endpoints, as on a node.
#include "../probes/datapath.c"

#define POD_SPREAD 16

BPF_PERCPU_ARRAY(flood_count, __u64, 1);

int flood(struct __sk_buff *skb)
{
	struct flow_event ev;
	__u32 zero = 0;
	__u64 *count = flood_count.lookup(&zero);

	if (!count || bpf_skb_load_bytes(skb, 0, &ev, sizeof(ev)) != 0)
		return TC_ACT_SHOT;
	*count += 1;
	ev.ktime_ns = bpf_ktime_get_ns();
	ev.sport = 32768 + (*count & 0x3fff);
	ev.saddr += (__u32)(*count % POD_SPREAD) << 24; /* the last octet, network order */
	if (events.ringbuf_output(&ev, sizeof(ev), 0) != 0) {
		__u64 *lost = lost_events.lookup(&zero);
		if (lost)
			*lost += 1;
	}
	return TC_ACT_OK;
}
