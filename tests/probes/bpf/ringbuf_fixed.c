// A test program for fixed-size ring buffer records: one 16-byte record per packet run through
// it, reserved then committed, except: a packet of 1000 bytes or more has its record discarded;
// a packet of exactly 999 bytes keeps its record reserved (BUSY) for a while before committing
// it, so that a reader running meanwhile meets a busy record.
#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>
struct rec { u32 len; u32 seq; u64 pad; };
BPF_RINGBUF_OUTPUT(events, 1);
BPF_PERCPU_ARRAY(lost, u64, 1);

struct scratch { u8 buf[512]; };
BPF_PERCPU_ARRAY(scratch, struct scratch, 1);

int emit(struct __sk_buff *skb) {
    u32 len = skb->len;
    struct rec *r = events.ringbuf_reserve(sizeof(struct rec));
    if (!r) {
        int z = 0; u64 *v = lost.lookup(&z); if (v) *v += 1;
        return TC_ACT_OK;
    }
    r->len = len; r->seq = 7; r->pad = 0;
    if (len == 999) {
        // a few milliseconds of checksumming (bcc cannot pass bpf_loop a callback)
        int z = 0;
        struct scratch *s = scratch.lookup(&z);
        u32 sum = 0;
        if (s)
            for (int i = 0; i < 20000; i++) {
                sum = bpf_csum_diff(0, 0, (void *)s->buf, sizeof(s->buf), sum);
                sum = bpf_csum_diff(0, 0, (void *)s->buf, sizeof(s->buf), sum);
                sum = bpf_csum_diff(0, 0, (void *)s->buf, sizeof(s->buf), sum);
                sum = bpf_csum_diff(0, 0, (void *)s->buf, sizeof(s->buf), sum);
            }
        r->pad = sum;
    }
    if (len >= 1000)
        events.ringbuf_discard(r, 0);
    else
        events.ringbuf_submit(r, 0);
    return TC_ACT_OK;
}
