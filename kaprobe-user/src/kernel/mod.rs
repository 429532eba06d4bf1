//! What kaprobe learns about the running kernel before loading anything: its BTF (struct
//! offsets, enum values), `tcp_keepalive_timer`'s address, HZ, and the process's
//! capabilities.
pub(crate) mod btf;
pub(crate) mod facts;
pub(crate) mod privileges;
