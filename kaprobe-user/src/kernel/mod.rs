//! What kaprobe learns about the running kernel before loading anything: its BTF (struct
//! offsets, enum values), `tcp_keepalive_timer`'s address, HZ, and the process's
//! capabilities.
pub mod btf;
pub mod facts;
pub mod privileges;
