//! The maps shared by the programs, and the one way records leave the kernel.
use aya_ebpf::{
    macros::map,
    maps::{Array, PerCpuArray, RingBuf},
};
use kaprobe_common::{ConnState, RecentReset, Record, SOCK_WAYS, SockSet, TimerScratch, stat};

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

/// Releases the slot of the socket with key `key` (its connection is over), returning what
/// it held.
#[inline(always)]
pub fn take_conn(key: u64) -> Option<ConnState> {
    let set = sock_set(key)?;
    for i in 0..SOCK_WAYS {
        if set.keys[i] == key {
            set.keys[i] = 0;
            return set.slots.get(i).copied();
        }
    }
    None
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

/// Sends a record to the agent (waking it up if it waits), counting it when the ring
/// buffer is full. For rare records: keepalive, resets, errors. False if it was lost.
#[inline(always)]
pub fn emit<T: Record + 'static>(record: &T) -> bool {
    sent(record, EVENTS.output::<T>(record, 0).is_ok())
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
    sent(record, EVENTS.output::<T>(record, flags).is_ok())
}

/// The keepalive timer scratch of this CPU.
#[inline(always)]
pub fn timer_scratch() -> Option<&'static mut TimerScratch> {
    // SAFETY: per-CPU array slot, valid for the program's run and private to this CPU.
    TIMER_SCRATCH.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}

/// A firing of a keepalive timer takes microseconds; a scratch older than this was left by
/// an entry whose exit never ran (e.g. the exit hook not attached yet) and is ignored.
const TIMER_STALE_NS: u64 = 10_000_000;

/// This CPU's scratch if a keepalive timer is running on it for socket `sk` right now.
#[inline(always)]
pub fn running_timer_of(sk: u64) -> Option<&'static mut TimerScratch> {
    let s = timer_scratch()?;
    let fresh = crate::kernel::now_ns().wrapping_sub(s.record.header.ts_ns) < TIMER_STALE_NS;
    (s.timer != 0 && s.record.header.sk == sk && fresh).then_some(s)
}

/// The RST memory of this CPU.
#[inline(always)]
pub fn recent_reset() -> Option<&'static mut RecentReset> {
    // SAFETY: as for `timer_scratch`.
    RECENT_RESET.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}
