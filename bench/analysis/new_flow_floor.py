#!/usr/bin/env python3
"""Analysis, not product code (docs/l4-dataplane.md, "The new-flow floor"):
what one map insert costs an XDP program on this machine, by
BPF_PROG_TEST_RUN with tests/src/program_cost.rs's method: single runs
(repeat 1), a new key per run (the packet's first 16 bytes, random), 2,000
runs, every program interleaved run by run (in a shuffled order) with the
empty one, medians net of it; maps created afresh each round, and checked
afterwards to hold one entry per insert.

Programs are raw BPF instructions (no clang here): each reads the key from
the packet and builds key and value on the stack, then (a) nothing (the
empty program: 2 instructions), (a2) nothing more, (b) one LRU hash insert,
(c) one plain hash insert, (d) one hash insert with BPF_F_NO_PREALLOC,
(e) an array slot write (index from the key, the verifier's inlined array
lookup, a read of the slot, the key and value stored), (f) two LRU hash
inserts, (g) an LRU hash lookup that misses, (h) that lookup and the insert
after it (a new flow's pattern), and smaller tables for comparison.
Key 16 bytes (FlowKey), value VALUE bytes (FlowValue: 32), 262,144 entries
(FLOWS). Root; run: `sudo python3 new_flow_floor.py` (ROUNDS, RUNS, VALUE,
ONLY="a ,b " as environment variables).
"""
import ctypes, os, struct, sys, statistics, random

libc = ctypes.CDLL(None, use_errno=True)
SYS_BPF = 321
ENTRIES = 262_144
KEY = 16
VALUE = int(os.environ.get("VALUE", "32"))
RUNS = int(os.environ.get("RUNS", "2000"))
ROUNDS = int(os.environ.get("ROUNDS", "3"))
XDP_PASS = 2
SMALL = 8_192


def bpf(cmd, attr):
    buf = ctypes.create_string_buffer(attr, 128)
    r = libc.syscall(SYS_BPF, cmd, buf, 128)
    if r < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return r, buf


def map_create(map_type, key, value, entries, flags=0):
    fd, _ = bpf(0, struct.pack("<5I", map_type, key, value, entries, flags))
    return fd


def insn(code, dst=0, src=0, off=0, imm=0):
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


def ld_map(dst, fd):
    return insn(0x18, dst, 1, 0, fd) + insn(0, 0, 0, 0, 0)


def exit_pass():
    return insn(0xB7, 0, 0, 0, XDP_PASS) + insn(0x95)


# Packet bytes 0..16 are the key: read into r6, r7; key at fp-16, value below it.
VAL_OFF = -16 - VALUE


def prologue():
    return b"".join([
        insn(0x61, 2, 1, 0),  # r2 = data
        insn(0x61, 3, 1, 4),  # r3 = data_end
        insn(0xBF, 4, 2),  # r4 = r2
        insn(0x07, 4, 0, 0, 16),  # r4 += 16
        insn(0x2D, 4, 3, 0),  # if r4 > r3 goto out (offset patched)
        insn(0x79, 6, 2, 0),  # r6 = *(u64 *)(data + 0)
        insn(0x79, 7, 2, 8),  # r7 = *(u64 *)(data + 8)
    ])


def build_key_value(key_reg_lo=6):
    out = [insn(0x7B, 10, key_reg_lo, -16), insn(0x7B, 10, 7, -8)]
    for k in range(VALUE // 8):
        out.append(insn(0x7B, 10, 6, VAL_OFF + 8 * k))
    return b"".join(out)


def update(fd):
    return b"".join([
        ld_map(1, fd),
        insn(0xBF, 2, 10), insn(0x07, 2, 0, 0, -16),
        insn(0xBF, 3, 10), insn(0x07, 3, 0, 0, VAL_OFF),
        insn(0xB7, 4, 0, 0, 0),  # BPF_ANY
        insn(0x85, 0, 0, 0, 2),  # bpf_map_update_elem
    ])


def lookup(fd):
    return b"".join([
        ld_map(1, fd),
        insn(0xBF, 2, 10), insn(0x07, 2, 0, 0, -16),
        insn(0x85, 0, 0, 0, 1),  # bpf_map_lookup_elem
    ])


def program(body):
    """prologue, body, exit; the bounds check's failure jumps to the exit."""
    pro = prologue()
    n_pro = len(pro) // 8
    n_body = len(body) // 8
    # insn 4, the bounds check: out of bounds, jump to the exit
    pro = pro[:4 * 8] + insn(0x2D, 4, 3, n_pro + n_body - 5) + pro[5 * 8:]
    return pro + body + exit_pass()


def array_slot(fd, entries=ENTRIES, fixed=False, write=True):
    """A direct-mapped slot: index from the key (xor, multiply, shift), the
    array lookup (inlined by the verifier), a read of the slot's key (is it
    taken?), then the key and value stored."""
    slot = KEY + VALUE
    out = [
        insn(0xBF, 0, 6), insn(0xAF, 0, 7),  # r0 = lo ^ hi
        insn(0x27, 0, 0, 0, 0x61C88647),  # r0 *= golden
        insn(0x77, 0, 0, 0, 20), insn(0x57, 0, 0, 0, 0 if fixed else entries - 1),
        insn(0x63, 10, 0, -4 - 16 - VALUE),  # *(u32 *)(fp - idx) = r0
        ld_map(1, fd),
        insn(0xBF, 2, 10), insn(0x07, 2, 0, 0, -4 - 16 - VALUE),
        insn(0x85, 0, 0, 0, 1),  # bpf_map_lookup_elem (inlined for arrays)
    ]
    stores = [insn(0x79, 1, 0, 0),  # r1 = slot key's first word
              insn(0x1D, 1, 6, 0)]  # if r1 == r6 (same flow) goto +0 (a branch)
    if write:
        stores += [insn(0x7B, 0, 6, 0), insn(0x7B, 0, 7, 8)]
        for k in range(VALUE // 8):
            stores.append(insn(0x7B, 0, 6, KEY + 8 * k))
    out.append(insn(0x15, 0, 0, len(stores), 0))  # if r0 == 0 skip
    out += stores
    assert slot <= 512
    return b"".join(out)


def prog_load(insns):
    lic = ctypes.create_string_buffer(b"GPL")
    ibuf = ctypes.create_string_buffer(insns, len(insns))
    log = ctypes.create_string_buffer(1 << 16)
    def attr(level):
        return struct.pack("<IIQQIIQII", 6, len(insns) // 8, ctypes.addressof(ibuf),
                           ctypes.addressof(lic), level, len(log) if level else 0,
                           ctypes.addressof(log) if level else 0, 0, 0)
    try:
        fd, _ = bpf(5, attr(0))
    except OSError:
        try:
            bpf(5, attr(2))
        finally:
            print(log.value.decode()[-3000:], file=sys.stderr)
        raise
    return fd


def test_run(fd, pkt):
    pbuf = ctypes.create_string_buffer(pkt, len(pkt))
    attr = struct.pack("<IIIIQQII", fd, 0, len(pkt), 0, ctypes.addressof(pbuf), 0, 1, 0)
    _, out = bpf(10, attr)
    retval, duration = struct.unpack_from("<I", out.raw, 4)[0], struct.unpack_from("<I", out.raw, 36)[0]
    assert retval == XDP_PASS, retval
    return duration


def map_count(fd):
    """Entries in a hash map (BPF_MAP_GET_NEXT_KEY walk)."""
    n = 0
    key = ctypes.create_string_buffer(KEY)
    nxt = ctypes.create_string_buffer(KEY)
    first = True
    while True:
        attr = struct.pack("<I4xQQ", fd, 0 if first else ctypes.addressof(key), ctypes.addressof(nxt))
        try:
            bpf(4, attr)
        except OSError:
            return n
        n += 1
        first = False
        ctypes.memmove(key, nxt, KEY)


def one_round(rnd):
    maps = {
        "lru": map_create(9, KEY, VALUE, ENTRIES),
        "lru2": map_create(9, KEY, VALUE, ENTRIES),
        "hash": map_create(1, KEY, VALUE, ENTRIES),
        "hash_noprealloc": map_create(1, KEY, VALUE, ENTRIES, 1),
        "array": map_create(2, 4, KEY + VALUE, ENTRIES),
        "lru_lookup": map_create(9, KEY, VALUE, ENTRIES),
        "lru_miss_insert": map_create(9, KEY, VALUE, ENTRIES),
        "lru_small": map_create(9, KEY, VALUE, SMALL),
        "array_small": map_create(2, 4, KEY + VALUE, SMALL),
        "array_64k": map_create(2, 4, KEY + VALUE, 65_536),
        "array_fixed": map_create(2, 4, KEY + VALUE, ENTRIES),
        "array_read": map_create(2, 4, KEY + VALUE, ENTRIES),
    }
    second_key = b"".join([
        insn(0xBF, 8, 6), insn(0xA7, 8, 0, 0, 0x5A5A5A5A),  # r8 = r6 ^ const
        insn(0x7B, 10, 8, -16),
    ])
    progs = {
        "a empty": insn(0xB7, 0, 0, 0, XDP_PASS) + insn(0x95),
        "a2 key+value on stack, no call": program(build_key_value()),
        "b LRU hash insert": program(build_key_value() + update(maps["lru"])),
        "c hash insert": program(build_key_value() + update(maps["hash"])),
        "d hash NO_PREALLOC insert": program(build_key_value() + update(maps["hash_noprealloc"])),
        "e array slot write": program(build_key_value() + array_slot(maps["array"])),
        "f two LRU hash inserts": program(build_key_value() + update(maps["lru2"]) + second_key + update(maps["lru2"])),
        "g LRU hash lookup (miss)": program(build_key_value() + lookup(maps["lru_lookup"])),
        "h LRU lookup (miss) + insert": program(build_key_value() + lookup(maps["lru_miss_insert"]) + update(maps["lru_miss_insert"])),
        "b' LRU hash insert, 8,192 entries": program(build_key_value() + update(maps["lru_small"])),
        "e' array slot write, 8,192 slots": program(build_key_value() + array_slot(maps["array_small"], SMALL)),
        "e'' array slot write, 65,536 slots": program(build_key_value() + array_slot(maps["array_64k"], 65_536)),
        "e-read array slot read only": program(build_key_value() + array_slot(maps["array_read"], write=False)),
        "e0 array slot write, always slot 0": program(build_key_value() + array_slot(maps["array_fixed"], fixed=True)),
    }
    # ONLY="a ,b ,e ": these programs alone (name prefixes), fewer to interleave
    only = [o for o in os.environ.get("ONLY", "").split(",") if o]
    if only:
        progs = {n: p for n, p in progs.items() if any(n.startswith(o) for o in only)}
    fds = {name: prog_load(p) for name, p in progs.items()}
    names = list(fds)
    times = {n: [] for n in names}
    rng = random.Random(rnd)
    for i in range(RUNS):
        pkt = os.urandom(16) + bytes(48)
        order = names[:]
        rng.shuffle(order)
        for n in order:
            times[n].append(test_run(fds[n], pkt))
    # every insert happened: the maps hold one entry per run (two for f)
    for m, expect in [] if only else [("lru", RUNS), ("hash", RUNS), ("hash_noprealloc", RUNS), ("lru2", 2 * RUNS),
                      ("lru_miss_insert", RUNS), ("lru_lookup", 0), ("lru_small", RUNS)]:
        got = map_count(maps[m])
        assert got == expect, (m, got, expect)
    for fd in list(fds.values()) + list(maps.values()):
        os.close(fd)
    return times


def main():
    load = open("/proc/loadavg").read().split()[:3]
    results = []
    for rnd in range(ROUNDS):
        times = one_round(rnd)
        empty = statistics.median(times["a empty"])
        row = {n: (statistics.median(t), statistics.median(t) - empty) for n, t in times.items()}
        results.append(row)
        load = open("/proc/loadavg").read().split()[:3]
        print(f"round {rnd}: load {' '.join(load)}; raw / net median ns:", flush=True)
        for n, (raw, net) in row.items():
            print(f"  {n:36} {raw:6.0f} / {net:6.0f}", flush=True)
    print(f"summary over {ROUNDS} rounds of {RUNS} runs (value {VALUE} B): net medians min-max (median)")
    for n in results[0]:
        nets = sorted(r[n][1] for r in results)
        print(f"  {n:36} {nets[0]:5.0f}-{nets[-1]:5.0f} ({statistics.median(nets):5.0f})")


main()
