//! The maps shared by the programs, and the one way records leave the kernel.
use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, generated::bpf_get_current_cgroup_id,
    },
    macros::map,
    maps::{Array, LruHashMap, PerCpuArray, RingBuf},
};
use kaprobe_common::{
    BIRTH_BURST_SECONDS, BirthBudget, CloseRecord, ConnState, ListenKey, Owner, RecentReset,
    Record, SOCK_WAYS, SockSet, TimerScratch, Tuple, conn_flag, owner_flag, stat,
};

/// Every record goes through this one ring buffer. Its size is set by the agent
/// (`--ring-size`) before load.
#[map(name = "EVENTS")]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(4 << 20, 0);

/// Per-CPU counters of what could not be done ([`stat`]): read and reported by the agent.
#[map(name = "STATS")]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stat::COUNT, 0);

/// Per-socket aggregation (birth, FIN times), an 8-way set-associative table indexed by the
/// socket's key (its cookie; its address for raw tracepoints): claiming, finding and releasing a slot cost a few loads
/// and stores (array lookups are inlined), where a hash map insert plus delete cost about
/// 0.5 µs per socket on the target machine (and socket storage ~1.1 µs to create). A full
/// set evicts its oldest entry, counted in `stat::CONN_TABLE_FULL`. Its size is set by the
/// agent from `--max-connections`.
#[map(name = "SOCKS")]
pub static SOCKS: Array<SockSet> = Array::with_max_entries(1, 0);

/// Owner of each listening port (`listen()` runs in the owner's context): accepted
/// connections are born in softirq, where no process is current, and inherit it.
#[map(name = "LISTENERS")]
pub static LISTENERS: LruHashMap<ListenKey, Owner> = LruHashMap::with_max_entries(16384, 0);

/// The keepalive timer running on this CPU, between `timer_expire_entry` and `_exit`.
#[map(name = "TIMER_SCRATCH")]
pub static TIMER_SCRATCH: PerCpuArray<TimerScratch> = PerCpuArray::with_max_entries(1, 0);

/// The last RST sent or processed on this CPU (see [`RecentReset`]).
#[map(name = "RECENT_RESET")]
pub static RECENT_RESET: PerCpuArray<RecentReset> = PerCpuArray::with_max_entries(1, 0);

/// Adds one to a per-CPU counter.
#[inline(always)]
pub fn count(index: u32) {
    if let Some(counter) = STATS.get_ptr_mut(index) {
        // SAFETY: the pointer comes from a successful per-CPU array lookup: a valid, aligned
        // u64 of this CPU's slot, touched only on this CPU. (A program in process context
        // interrupted between the load and the store by a softirq counting the same index
        // could lose that one count: Rust's bpfel target offers no atomic add, and the window
        // is a few instructions.)
        unsafe { *counter += 1 };
    }
}

const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;
const BPF_RB_AVAIL_DATA: u64 = 0;

/// Set number `index` of `SOCKS` (masked to the table's size).
#[inline(always)]
fn sock_set(index: u64) -> Option<&'static mut SockSet> {
    let index = index as u32 & crate::conf!(sock_sets_mask);
    // SAFETY: array slot from a successful lookup, valid for the program's run. Two CPUs
    // may write the same set at once only for different sockets of the same set: at worst
    // one of them loses its entry, as with an eviction.
    SOCKS.get_ptr_mut(index).map(|p| unsafe { &mut *p })
}

/// The set where the socket with key `key` ([`crate::kernel::Mem::sock_key`]) lives if it
/// can: eight sockets with consecutive keys share one. Cookies are handed out in sequence
/// (in per-CPU batches), so the sockets born one after another on a CPU find their set's key
/// line in the cache: under churn a birth or a close costs no cache miss. (With one socket
/// per set, each birth touched a set not seen for a whole turn of the table, a miss on a
/// cold line that was a third of `inet_sock_set_state`'s time: docs/design.md.) Addresses
/// (raw tracepoints) are slab-packed ~2.5 KB apart: the shifts spread them too. The high
/// bits move the grouping on every turn of the table.
#[inline(always)]
fn primary_set(key: u64) -> Option<&'static mut SockSet> {
    sock_set((key >> 3) ^ (key >> 17))
}

/// Where a socket goes when its primary set is full: anywhere (a multiplicative hash).
/// Without it, eight long-lived connections opened together fill their primary set, and
/// the eight sockets of the next turn of the table that share it would evict them.
#[inline(always)]
fn alternate_set(key: u64) -> Option<&'static mut SockSet> {
    sock_set(key.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 40)
}

/// The way of `set` that holds `key`, if any (free ways have key 0, never a socket's).
#[inline(always)]
fn way_of(set: &SockSet, key: u64) -> Option<usize> {
    (0..SOCK_WAYS).find(|&i| set.keys[i] == key)
}

/// The way of `set` that holds `key`, or else its first free way (one pass: a birth's
/// key is almost never there).
#[inline(always)]
fn way_for(set: &SockSet, key: u64) -> Option<usize> {
    let mut free = None;
    for i in 0..SOCK_WAYS {
        if set.keys[i] == key {
            return Some(i);
        }
        if set.keys[i] == 0 && free.is_none() {
            free = Some(i);
        }
    }
    free
}

/// Room for [`opaque_way`]'s round trip, one per CPU.
#[map(name = "WAY_SCRATCH")]
pub static WAY_SCRATCH: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// Way number `i`, made opaque to the verifier. The way scans above end in a different
/// constant on each path, and a slot pointer with a constant offset differs from every
/// other: the verifier then walks everything after a scan once per way it could have
/// found (kp_set_state: 92k instructions verified for 2.9k, ~0.2 s of start-up on the
/// target machine). Read back from memory, the number is any value of 0..SOCK_WAYS for the
/// verifier, the same on every path, and the paths merge.
#[inline(always)]
fn opaque_way(i: usize) -> Option<usize> {
    let p = WAY_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: per-CPU array slot from a successful lookup: valid, aligned, private to this
    // CPU while the program runs (a program does not nest on one CPU). Volatile, so that
    // the compiler keeps the round trip through memory that hides the constant.
    let i = unsafe {
        core::ptr::write_volatile(p, i as u32);
        core::ptr::read_volatile(p)
    };
    Some(i as usize & (SOCK_WAYS - 1))
}

/// Way `i` of `set`, now held by `key`, zeroed.
#[inline(always)]
fn take_way(set: &'static mut SockSet, i: usize, key: u64) -> Option<&'static mut ConnState> {
    let i = opaque_way(i)?;
    *set.keys.get_mut(i)? = key;
    let slot = set.slots.get_mut(i)?;
    crate::kernel::zero(slot);
    Some(slot)
}

/// A zeroed slot for a socket being born (or first seen) with key `key`: in its primary set
/// if that has room, else in its alternate set, else the alternate set's oldest entry is
/// evicted (counted in `stat::CONN_TABLE_FULL`). An entry the socket already has is reused
/// (a socket that connects again); only the primary set is searched for it when that has
/// room: a socket is in its alternate set only if the primary was full when it came, see
/// [`claim_conn`].
#[inline(always)]
pub fn claim_new(key: u64) -> Option<&'static mut ConnState> {
    let set = primary_set(key)?;
    if let Some(i) = way_for(set, key) {
        return take_way(set, i, key);
    }
    let set = alternate_set(key)?;
    if let Some(i) = way_for(set, key) {
        return take_way(set, i, key);
    }
    count(stat::CONN_TABLE_FULL);
    let mut oldest = 0;
    for i in 1..SOCK_WAYS {
        if set.slots[i].birth_ns < set.slots[oldest].birth_ns {
            oldest = i;
        }
    }
    take_way(set, oldest, key)
}

/// The slot of the socket with key `key`, wherever it is; claimed ([`claim_new`]) if it has
/// none.
#[inline(always)]
pub fn claim_conn(key: u64) -> Option<&'static mut ConnState> {
    match find_slot(key) {
        Some((set, i)) => set.slots.get_mut(i),
        None => claim_new(key),
    }
}

/// The set of the socket with key `key` and the way it holds it, if any.
#[inline(always)]
fn find_slot(key: u64) -> Option<(&'static mut SockSet, usize)> {
    if key == 0 {
        return None;
    }
    let set = primary_set(key)?;
    if let Some(i) = way_of(set, key) {
        return Some((set, opaque_way(i)?));
    }
    let set = alternate_set(key)?;
    let i = way_of(set, key)?;
    Some((set, opaque_way(i)?))
}

/// The owner recorded for the socket with key `key` and addresses `tuple` (see
/// [`owner_of_slot`]), nothing claimed.
#[inline(always)]
pub fn owner_of_sock(key: u64, tuple: &Tuple) -> Owner {
    let slot = find_slot(key).and_then(|(set, i)| set.slots.get(i));
    owner_of_slot(slot, tuple.netns, tuple.sport)
}

/// The process running now (call only in process context: connect, listen). Its name is
/// the process's (the thread group leader's `comm`), not the calling thread's.
#[inline(always)]
pub fn current_owner<M: crate::kernel::Mem>() -> Owner {
    let task = M::current_task();
    let leader = M::read::<u64>(task, crate::conf!(task_group_leader));
    let comm_at = crate::conf!(task_comm);
    // Two 8-byte loads: reading the array whole would be a byte-at-a-time copy.
    let lo = M::read::<u64>(leader, comm_at);
    let hi = M::read::<u64>(leader, comm_at + 8);
    let mut comm = [0u8; 16];
    comm[..8].copy_from_slice(&lo.to_ne_bytes());
    comm[8..].copy_from_slice(&hi.to_ne_bytes());
    if comm[0] == 0 {
        comm = bpf_get_current_comm().unwrap_or_default();
    }
    Owner {
        tgid: (bpf_get_current_pid_tgid() >> 32) as u32,
        flags: 0,
        // SAFETY: helper without arguments.
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        comm,
    }
}

/// The owner of the listener on `port` in namespace `netns`, if one was seen (also after it
/// closed: its accepted connections may outlive it).
#[inline(always)]
pub fn listener_owner(netns: u32, port: u16) -> Owner {
    let mut o = listener_entry(netns, port);
    o.flags = 0;
    o
}

/// The owner of the listener on `port` in namespace `netns` if it still listens (for an RST
/// of this host that no socket sent: the server it was meant for).
#[inline(always)]
pub fn open_listener_owner(netns: u32, port: u16) -> Owner {
    let o = listener_entry(netns, port);
    if o.flags & owner_flag::LISTENER_CLOSED != 0 {
        return Owner::default();
    }
    o
}

/// The `LISTENERS` entry of a port, flags included.
#[inline(always)]
fn listener_entry(netns: u32, port: u16) -> Owner {
    let key = ListenKey {
        netns,
        port,
        _pad: 0,
    };
    // SAFETY: the value is copied out at once; a concurrent update can at worst tear it,
    // giving a wrong but harmless owner.
    unsafe { LISTENERS.get(&key) }.copied().unwrap_or_default()
}

/// The owner recorded for a connection slot: its own (client), else its listener's
/// (accepted). A socket without a slot (born before kaprobe started, or evicted) may still be
/// an accepted one: its listener is tried too.
#[inline(always)]
pub fn owner_of_slot(conn: Option<&ConnState>, netns: u32, sport: u16) -> Owner {
    match conn {
        Some(c) if c.owner.tgid != 0 => c.owner,
        Some(c) if c.flags & conn_flag::PASSIVE == 0 => Owner::default(),
        _ => listener_owner(netns, sport),
    }
}

/// Releases the slot of the socket with key `key` (its connection is over), returning what
/// it held.
#[inline(always)]
pub fn take_conn(key: u64) -> Option<ConnState> {
    let (set, i) = find_slot(key)?;
    *set.keys.get_mut(i)? = 0;
    set.slots.get(i).copied()
}

/// This CPU's birth token bucket (`--birth-budget`).
#[map(name = "BIRTH_BUDGET")]
pub static BIRTH_BUDGET: PerCpuArray<BirthBudget> = PerCpuArray::with_max_entries(1, 0);

/// Whether the birth of a connection without keepalive may be recorded: this CPU's token
/// bucket holds a birth. It is refilled at `--birth-budget` per second, holds up to
/// `BIRTH_BURST_SECONDS` of that, and starts (at the agent's start) with one second's
/// worth. A birth beyond it is
/// shed and counted (`stat::BIRTHS_SHED`): under churn the cost of recording births, most
/// of `inet_sock_set_state`'s, stays bounded, while a host opening connections at an
/// ordinary rate, or in bursts after quiet times, keeps the owner and lifetime of every one
/// (docs/design.md). No division: tokens count in 1/HZ of a birth.
#[inline(always)]
pub fn birth_allowed() -> bool {
    let budget = crate::conf!(birth_budget);
    if budget == u32::MAX {
        return true;
    }
    let Some(b) = BIRTH_BUDGET.get_ptr_mut(0) else {
        return true;
    };
    let hz = crate::conf!(birth_window_jiffies) as u64;
    let rate = budget as u64;
    let now = crate::kernel::jiffies();
    // SAFETY: per-CPU array slot, valid for the program's run and private to this CPU (see
    // `count` on the harmless race with a softirq: at worst one birth more or less).
    let b = unsafe { &mut *b };
    if b.last == 0 {
        // This CPU's first birth: its bucket has been filling since the agent started (one
        // clock read and one division, once per CPU).
        let since_ns = crate::kernel::now_ns().saturating_sub(crate::conf!(birth_start_ns));
        let since = since_ns / (crate::conf!(birth_jiffy_ns) as u64).max(1);
        b.last = now.wrapping_sub(since.min(hz * BIRTH_BURST_SECONDS));
        b.units = rate * hz;
    }
    // A full bucket is BIRTH_BURST_SECONDS of refill: a longer quiet time adds nothing (and
    // the product cannot overflow: 10 * HZ * u32::MAX < 2^64).
    let elapsed = now.wrapping_sub(b.last).min(hz * BIRTH_BURST_SECONDS);
    b.last = now;
    b.units = (b.units + elapsed * rate).min(rate * hz * BIRTH_BURST_SECONDS);
    if b.units >= hz {
        b.units -= hz;
        true
    } else {
        count(stat::BIRTHS_SHED);
        false
    }
}

/// Whether network namespace `netns` passes `--netns` (always when not filtered).
#[inline(always)]
pub fn netns_wanted(netns: u32) -> bool {
    let n_netns = crate::conf!(n_filter_netns) as usize;
    if n_netns == 0 {
        return true;
    }
    let wanted = crate::conf!(filter_netns);
    let mut hit = false;
    for (i, ns) in wanted.iter().enumerate() {
        if i < n_netns && *ns == netns {
            hit = true;
        }
    }
    hit
}

/// `--netns` and `--port`, applied here so that other connections' records cost neither
/// ring space nor the agent's time. (The agent applies every filter again.)
#[inline(always)]
fn wanted<T: Record>(record: &T) -> bool {
    wanted_tuple(record.tuple())
}

/// Whether a record of the connection `t` passes `--netns` and `--port`.
#[inline(always)]
fn wanted_tuple(t: &Tuple) -> bool {
    wanted_ends(t.netns, t.sport, t.dport)
}

/// Whether a record of a connection in namespace `netns` between ports `sport` and `dport`
/// passes `--netns` and `--port`.
#[inline(always)]
fn wanted_ends(netns: u32, sport: u16, dport: u16) -> bool {
    if !netns_wanted(netns) {
        return false;
    }
    let n_ports = crate::conf!(n_filter_ports) as usize;
    if n_ports != 0 {
        let wanted = crate::conf!(filter_ports);
        let mut hit = false;
        for (i, p) in wanted.iter().enumerate() {
            if i < n_ports && (*p == sport || *p == dport) {
                hit = true;
            }
        }
        if !hit {
            return false;
        }
    }
    true
}

/// Counts the fate of one record: sent, or lost (in total and by kind).
#[inline(always)]
fn sent<T: Record>(record: &T, ok: bool) -> bool {
    if ok {
        count(stat::RECORDS_SENT);
    } else {
        count(stat::RINGBUF_FULL);
        count(stat::LOST_BY_KIND + record.header().kind);
    }
    ok
}

/// The one way out: a record the filters keep goes into the ring with `flags`, and its
/// fate is counted. False only if it was lost.
#[inline(always)]
fn output<T: Record + 'static>(record: &T, flags: u64) -> bool {
    if !wanted(record) {
        count(stat::FILTERED);
        return true;
    }
    sent(record, EVENTS.output::<T>(record, flags).is_ok())
}

/// Sends a record to the agent (waking it up if it waits), counting it when the ring
/// buffer is full. For rare records: keepalive, resets, errors. False if it was lost.
#[inline(always)]
pub fn emit<T: Record + 'static>(record: &T) -> bool {
    output(record, 0)
}

/// Sends a high-volume record (closes, FINs) without waking the agent, unless the ring
/// buffer is filling up: under connection churn a wakeup per record would cost more than
/// the record. The agent drains the ring every 100 ms anyway.
#[inline(always)]
pub fn emit_bulk<T: Record + 'static>(record: &T) -> bool {
    output(record, bulk_flags())
}

/// The wakeup flags of a bulk record (see [`emit_bulk`]).
#[inline(always)]
fn bulk_flags() -> u64 {
    if EVENTS.query(BPF_RB_AVAIL_DATA) >= crate::conf!(wakeup_bytes) as u64 && wakeup_due() {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    }
}

/// Sends a close record written by `fill` in place in the ring buffer (zeroed first): the
/// most frequent record under `--all` churn (200 bytes), which built in a scratch map for
/// `bpf_ringbuf_output` to copy cost a second pass over it. Bulk unless `wake` (see
/// [`emit`], [`emit_bulk`]); filtered and counted as [`output`] does. The filters run on
/// the tuple `fill` wrote (a filtered record is discarded: the BPF stack has no room for
/// another copy of the tuple, and filters are rare), or, when the ring is full, on `ends`
/// (namespace, local and remote port), so that a record the filters would have dropped is
/// not counted as lost. False only if it was lost.
#[inline(always)]
pub fn emit_close(
    wake: bool,
    ends: impl FnOnce() -> (u32, u16, u16),
    fill: impl FnOnce(&mut CloseRecord),
) -> bool {
    let flags = if wake { 0 } else { bulk_flags() };
    let Some(mut entry) = EVENTS.reserve::<CloseRecord>(0) else {
        let filtered = crate::conf!(n_filter_netns) != 0 || crate::conf!(n_filter_ports) != 0;
        if filtered {
            let (netns, sport, dport) = ends();
            if !wanted_ends(netns, sport, dport) {
                count(stat::FILTERED);
                return true;
            }
        }
        count(stat::RINGBUF_FULL);
        count(stat::LOST_BY_KIND + kaprobe_common::kind::CLOSE);
        return false;
    };
    let p = entry.as_mut_ptr();
    // SAFETY: `p` is the reserved ring memory, sized and aligned for a CloseRecord and this
    // program's alone until submitted. It is zeroed before the reference is made: a
    // CloseRecord is integers only (`Words`), so all zeroes is a valid one.
    let rec = unsafe {
        crate::kernel::zero_raw(p);
        &mut *p
    };
    fill(rec);
    if !wanted_tuple(&rec.tuple) {
        count(stat::FILTERED);
        entry.discard(BPF_RB_NO_WAKEUP);
        return true;
    }
    count(stat::RECORDS_SENT);
    entry.submit(flags);
    true
}

/// The jiffy of this CPU's last forced wakeup.
#[map(name = "LAST_WAKEUP")]
pub static LAST_WAKEUP: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// At most one forced wakeup per jiffy and CPU. While the agent is behind, the ring stays
/// above the wakeup mark: a wakeup with every record (an irq_work each) then cost ~2 µs per
/// record in `inet_sock_set_state` under `--all` (measured with a debug build of the agent),
/// making the kernel slower exactly when the agent cannot keep up.
#[inline(always)]
fn wakeup_due() -> bool {
    let Some(last) = LAST_WAKEUP.get_ptr_mut(0) else {
        return true;
    };
    let now = crate::kernel::jiffies();
    // SAFETY: per-CPU array slot, valid for the program's run and private to this CPU (see
    // `count` on the harmless race with a softirq).
    unsafe {
        if *last == now {
            return false;
        }
        *last = now;
    }
    true
}

/// The keepalive timer scratch of this CPU.
#[inline(always)]
pub fn timer_scratch() -> Option<&'static mut TimerScratch> {
    // SAFETY: per-CPU array slot, valid for the program's run and private to this CPU.
    TIMER_SCRATCH.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}

/// A firing of a keepalive timer takes microseconds, but a CPU can be stalled in the middle
/// of one (a VM's vCPU descheduled by its host, software emulation): 10 ms proved too short
/// there, and a death inside the firing was then reported as a separate close. A scratch
/// older than this was left by an entry whose exit never ran (the exit hook not attached
/// yet, at start-up) and is ignored; it could only be mistaken for the same socket's
/// firing anyway.
const TIMER_STALE_NS: u64 = 1_000_000_000;

/// This CPU's scratch if a keepalive timer is running on it for socket `sk` right now.
#[inline(always)]
pub fn running_timer_of(sk: u64) -> Option<&'static mut TimerScratch> {
    let s = timer_scratch()?;
    if s.timer == 0 || s.record.header.sk != sk {
        return None; // first, as a clock read costs ~50 ns in a VM
    }
    let fresh = crate::kernel::now_ns().wrapping_sub(s.record.header.ts_ns) < TIMER_STALE_NS;
    fresh.then_some(s)
}

/// The RST memory of this CPU.
#[inline(always)]
pub fn recent_reset() -> Option<&'static mut RecentReset> {
    // SAFETY: as for `timer_scratch`.
    RECENT_RESET.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}
