//! The host as sock_diag and /proc show it, shared by `ls` and `watch`: network namespaces,
//! sockets and their options, processes owning them, and what was open before the agent.
pub mod diag;
pub mod existing;
pub mod netns;
pub mod owner;
pub mod sys;
