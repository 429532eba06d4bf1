//! The host as sock_diag and /proc show it, shared by `ls` and `watch`: network namespaces,
//! sockets and their options, processes owning them, and what was open before the agent.
pub(crate) mod diag;
pub(crate) mod existing;
pub(crate) mod netns;
pub(crate) mod owner;
pub(crate) mod sys;
