// A test program: one ring buffer record per packet run through it (the packet length and a
// constant), and a per-CPU count of records the full ring refused.
#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>
struct rec { u32 len; u32 seq; u64 pad; };
BPF_RINGBUF_OUTPUT(events, 1);
BPF_PERCPU_ARRAY(lost, u64, 1);
int emit(struct __sk_buff *skb) {
    struct rec r = {.len = skb->len, .seq = 7};
    if (events.ringbuf_output(&r, sizeof(r), 0) != 0) {
        int z = 0; u64 *v = lost.lookup(&z); if (v) *v += 1;
    }
    return TC_ACT_OK;
}
