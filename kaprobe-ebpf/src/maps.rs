//! The maps shared by the programs, and the one way records leave the kernel.
use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid,
        generated::{bpf_get_current_cgroup_id, bpf_get_current_task},
    },
    macros::map,
    maps::{Array, LruHashMap, PerCpuArray, RingBuf},
};
use kaprobe_common::{
    CloseRecord, ConnState, ListenKey, Owner, RecentReset, Record, SOCK_WAYS, SockSet,
    TimerScratch, Tuple, conn_flag, stat,
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

/// The set of `SOCKS` where the socket with key `key` ([`crate::kernel::Mem::sock_key`])
/// lives.
#[inline(always)]
fn sock_set(key: u64) -> Option<&'static mut SockSet> {
    // No mixing: socket cookies are handed out in sequence (in per-CPU batches), and socket
    // addresses are slab-packed (~2.5 KB apart, hence the shift), so sockets born close in
    // time share few cache lines of the table. Measured: a mixing hash made every claim and
    // release two cache misses in a 5 MB table.
    let index = ((key ^ (key >> 11)) as u32) & crate::conf!(sock_sets_mask);
    // SAFETY: array slot from a successful lookup, valid for the program's run. Two CPUs
    // may write the same set at once only for different sockets of the same set: at worst
    // one of them loses its entry, as with an eviction.
    SOCKS.get_ptr_mut(index).map(|p| unsafe { &mut *p })
}

/// The slot of the socket with key `key`, claimed if it has none: a free slot of its set,
/// or else the set's oldest entry (evicted: counted).
#[inline(always)]
pub fn claim_conn(key: u64) -> Option<&'static mut ConnState> {
    let set = sock_set(key)?;
    let mut free = SOCK_WAYS;
    for i in 0..SOCK_WAYS {
        if set.keys[i] == key {
            return set.slots.get_mut(i);
        }
        if set.keys[i] == 0 && free == SOCK_WAYS {
            free = i;
        }
    }
    let i = if free < SOCK_WAYS {
        free
    } else {
        count(stat::CONN_TABLE_FULL);
        let mut oldest = 0;
        for i in 1..SOCK_WAYS {
            if set.slots[i].birth_ns < set.slots[oldest].birth_ns {
                oldest = i;
            }
        }
        oldest
    };
    *set.keys.get_mut(i)? = key;
    let slot = set.slots.get_mut(i)?;
    *slot = ConnState::default();
    Some(slot)
}

/// The set of the socket with key `key` and the way it holds it, if any (free ways have
/// key 0, which is never a socket's).
#[inline(always)]
fn find_slot(key: u64) -> Option<(&'static mut SockSet, usize)> {
    if key == 0 {
        return None;
    }
    let set = sock_set(key)?;
    let i = (0..SOCK_WAYS).find(|&i| set.keys[i] == key)?;
    Some((set, i))
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
pub fn current_owner() -> Owner {
    // SAFETY: helper without arguments; the task pointer is only read through
    // bpf_probe_read_kernel.
    let task = unsafe { bpf_get_current_task() };
    let leader = crate::kernel::read::<u64>(task, crate::conf!(task_group_leader));
    let mut comm = crate::kernel::read::<[u8; 16]>(leader, crate::conf!(task_comm));
    if comm[0] == 0 {
        comm = bpf_get_current_comm().unwrap_or_default();
    }
    Owner {
        tgid: (bpf_get_current_pid_tgid() >> 32) as u32,
        _pad: 0,
        // SAFETY: helper without arguments.
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        comm,
    }
}

/// The owner of the listener on `port` in namespace `netns`, if one was seen.
#[inline(always)]
pub fn listener_owner(netns: u32, port: u16) -> Owner {
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

/// `--netns` and `--port`, applied here so that other connections' records cost neither
/// ring space nor the agent's time. (The agent applies every filter again.)
#[inline(always)]
fn wanted<T: Record>(record: &T) -> bool {
    let Some(t) = record.tuple() else {
        return true;
    };
    let n_netns = crate::conf!(n_filter_netns) as usize;
    if n_netns != 0 {
        let wanted = crate::conf!(filter_netns);
        let mut hit = false;
        for (i, ns) in wanted.iter().enumerate() {
            if i < n_netns && *ns == t.netns {
                hit = true;
            }
        }
        if !hit {
            return false;
        }
    }
    let n_ports = crate::conf!(n_filter_ports) as usize;
    if n_ports != 0 {
        let wanted = crate::conf!(filter_ports);
        let mut hit = false;
        for (i, p) in wanted.iter().enumerate() {
            if i < n_ports && (*p == t.sport || *p == t.dport) {
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
    let flags = if EVENTS.query(BPF_RB_AVAIL_DATA) >= crate::conf!(wakeup_bytes) as u64 {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    output(record, flags)
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
    let fresh = crate::kernel::now_ns().wrapping_sub(s.record.header.ts_ns) < TIMER_STALE_NS;
    (s.timer != 0 && s.record.header.sk == sk && fresh).then_some(s)
}

/// Per-CPU room to build a [`CloseRecord`] (too big for the 512-byte BPF stack together
/// with what `inet_sock_set_state` keeps there).
#[map(name = "CLOSE_SCRATCH")]
pub static CLOSE_SCRATCH: PerCpuArray<CloseRecord> = PerCpuArray::with_max_entries(1, 0);

/// This CPU's close record scratch.
#[inline(always)]
pub fn close_scratch() -> Option<&'static mut CloseRecord> {
    // SAFETY: per-CPU array slot, valid for the program's run and private to this CPU (a
    // program does not nest on one CPU: the kernel skips a nested run and counts it).
    CLOSE_SCRATCH.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}

/// The RST memory of this CPU.
#[inline(always)]
pub fn recent_reset() -> Option<&'static mut RecentReset> {
    // SAFETY: as for `timer_scratch`.
    RECENT_RESET.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}
