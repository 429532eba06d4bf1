//! The maps shared by the programs, and the one way records leave the kernel.
use aya_ebpf::{
    macros::map,
    maps::{HashMap, PerCpuArray, RingBuf},
};
use kaprobe_common::{ConnState, RecentReset, TimerScratch, stat};

/// Every record goes through this one ring buffer. Its size is set by the agent
/// (`--ring-size`) before load.
#[map(name = "EVENTS")]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(4 << 20, 0);

/// Per-CPU counters of what could not be done ([`stat`]): read and reported by the agent.
#[map(name = "STATS")]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stat::COUNT, 0);

/// Per-socket aggregation (birth, FINs), keyed by socket address. Entries are removed when
/// the socket reaches `TCP_CLOSE` or is destroyed. Capacity set by the agent.
#[map(name = "CONNS")]
pub static CONNS: HashMap<u64, ConnState> = HashMap::with_max_entries(65536, 0);

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
        // SAFETY: the pointer comes from a successful per-CPU array lookup and is only
        // touched by this CPU, with preemption disabled while the program runs.
        unsafe { *counter += 1 };
    }
}

/// Sends a record to the agent, counting it when the ring buffer is full.
#[inline(always)]
pub fn emit<T: 'static>(record: &T) {
    if EVENTS.output::<T>(record, 0).is_err() {
        count(stat::RINGBUF_FULL);
    }
}

/// The keepalive timer scratch of this CPU.
#[inline(always)]
pub fn timer_scratch() -> Option<&'static mut TimerScratch> {
    // SAFETY: per-CPU array slot, valid for the program's run and private to this CPU.
    TIMER_SCRATCH.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}

/// The RST memory of this CPU.
#[inline(always)]
pub fn recent_reset() -> Option<&'static mut RecentReset> {
    // SAFETY: as for `timer_scratch`.
    RECENT_RESET.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}
