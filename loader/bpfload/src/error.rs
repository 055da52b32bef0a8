//! One error type for the whole crate: a message a user can act on, the
//! errno when a system call failed, and the kernel's own log when it wrote
//! one (the verifier's, for a program or BTF it refused).

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub msg: String,
    /// errno of the failing system call, if any.
    pub errno: Option<i32>,
    /// The tail of the verifier log of a refused program or BTF blob: empty
    /// if the verifier wrote nothing, `None` if no log was asked for.
    pub log: Option<String>,
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn new(msg: impl Into<String>) -> Self {
        Self {
            msg: msg.into(),
            errno: None,
            log: None,
        }
    }

    /// A failed system call: `what` says what we were doing.
    pub fn sys(what: impl fmt::Display, errno: i32) -> Self {
        let desc = std::io::Error::from_raw_os_error(errno);
        Self {
            msg: format!("{what}: {desc}"),
            errno: Some(errno),
            log: None,
        }
    }

    /// The same error with the verifier log's tail attached.
    pub fn with_log(self, log: impl Into<String>) -> Self {
        Self {
            log: Some(log.into()),
            ..self
        }
    }

    /// Prefix the message with context, keeping the errno and the log.
    pub fn context(self, what: impl fmt::Display) -> Self {
        Self {
            msg: format!("{what}: {}", self.msg),
            ..self
        }
    }
}

/// The message, then the verifier log on the following lines: what a user
/// needs to see why a program was refused.
impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.msg)?;
        match self.log.as_deref() {
            None => Ok(()),
            Some("") => f.write_str("\n(the verifier wrote no log)"),
            Some(log) => write!(f, "\nverifier log:\n{log}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Self {
            msg: e.to_string(),
            errno: e.raw_os_error(),
            log: None,
        }
    }
}

/// `Err(Error::new(format!(...)))`
#[macro_export]
macro_rules! bail {
    ($($t:tt)*) => { return Err($crate::error::Error::new(format!($($t)*))) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_shows_the_log_after_the_message() {
        let e = Error::sys("loading BPF program `p`", libc::EACCES);
        assert_eq!(e.errno, Some(libc::EACCES));
        assert_eq!(e.to_string(), e.msg);
        assert!(
            e.msg
                .starts_with("loading BPF program `p`: Permission denied")
        );
        let e = e.with_log("0: (95) exit\nR0 !read_ok").context("attach");
        assert!(e.msg.starts_with("attach: loading BPF program `p`"));
        assert_eq!(e.errno, Some(libc::EACCES), "context keeps the errno");
        assert_eq!(
            e.to_string(),
            format!("{}\nverifier log:\n0: (95) exit\nR0 !read_ok", e.msg)
        );
        let quiet = Error::new("x").with_log("");
        assert_eq!(quiet.to_string(), "x\n(the verifier wrote no log)");
    }

    #[test]
    fn io_errors_keep_their_errno() {
        let e = Error::from(std::io::Error::from_raw_os_error(libc::ENOENT));
        assert_eq!((e.errno, e.log), (Some(libc::ENOENT), None));
    }
}
