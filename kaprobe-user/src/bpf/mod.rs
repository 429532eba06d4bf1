//! The eBPF side as user space sees it: loading and attaching the programs, the one decoder
//! of ring-buffer records, and the kernel's own statistics of the programs.
pub mod decode;
pub(crate) mod loader;
pub(crate) mod progstats;
