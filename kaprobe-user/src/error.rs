//! Fatal errors: one line on stderr and a distinct exit status per kind.
use std::fmt;

/// Exit statuses (2 is clap's, for bad flags).
pub mod exit {
    pub const RUNTIME: i32 = 1;
    pub const USAGE: i32 = 2;
    pub const PERMISSION: i32 = 3;
    pub const UNSUPPORTED_KERNEL: i32 = 4;
    pub const OUTPUT: i32 = 5;
    /// The metrics address cannot be listened on (in use, not local, no permission).
    pub const METRICS: i32 = 6;
}

#[derive(Debug)]
pub struct Fatal {
    pub code: i32,
    pub message: String,
}

impl Fatal {
    pub fn new(code: i32, message: impl fmt::Display) -> Self {
        Fatal {
            code,
            message: message.to_string(),
        }
    }

    pub fn code(&self) -> i32 {
        self.code
    }
}

impl fmt::Display for Fatal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // One line, always.
        f.write_str(&self.message.replace('\n', " "))
    }
}

impl std::error::Error for Fatal {}
