//! One error type for the whole crate: a message a user can act on, plus the
//! errno when a system call failed.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub msg: String,
    /// errno of the failing system call, if any.
    pub errno: Option<i32>,
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn new(msg: impl Into<String>) -> Self {
        Self {
            msg: msg.into(),
            errno: None,
        }
    }

    /// A failed system call: `what` says what we were doing.
    pub fn sys(what: impl fmt::Display, errno: i32) -> Self {
        let desc = std::io::Error::from_raw_os_error(errno);
        Self {
            msg: format!("{what}: {desc}"),
            errno: Some(errno),
        }
    }

    /// Prefix the message with context, keeping the errno.
    pub fn context(self, what: impl fmt::Display) -> Self {
        Self {
            msg: format!("{what}: {}", self.msg),
            errno: self.errno,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.msg)
    }
}

impl std::error::Error for Error {}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Self {
            msg: e.to_string(),
            errno: e.raw_os_error(),
        }
    }
}

/// `Err(Error::new(format!(...)))`
#[macro_export]
macro_rules! bail {
    ($($t:tt)*) => { return Err($crate::error::Error::new(format!($($t)*))) };
}
