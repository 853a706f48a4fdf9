//! Entering network namespaces, the one way every Bulkhead crate does it.
//!
//! A network namespace is a per-thread attribute: `setns(2)` moves only the calling thread, and
//! sockets belong to the namespace of the thread that created them. So code either dedicates a
//! thread to the namespace ([`in_netns`], [`enter`] on a thread made for it) or enters it in a
//! child process between fork and exec ([`pre_exec_enter`]). Names are those of `ip netns`: a
//! file under [`NETNS_DIR`] that a namespace is bind-mounted on.
//!
//! Errors are [`std::io::Error`]s whose message names the namespace file; callers wrap them in
//! their own error types.

use std::{
    fs::File,
    io,
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::{Path, PathBuf},
    process::Command,
};

/// Where iproute2 keeps named network namespaces (`ip netns add NAME` bind-mounts one here).
pub const NETNS_DIR: &str = "/var/run/netns";

/// The file of the named network namespace.
pub fn path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

/// Opens the named network namespace's file (for [`enter_file`], [`in_netns_file`] or
/// [`pre_exec_enter`]).
pub fn open(name: &str) -> io::Result<File> {
    let p = path(name);
    File::open(&p).map_err(|e| with_path(&p, e))
}

/// Moves the calling thread into the named network namespace.
///
/// Only this thread moves, and it stays there: call it on a thread that exists for the
/// purpose, or use [`in_netns`].
pub fn enter(name: &str) -> io::Result<()> {
    enter_file(&open(name)?).map_err(|e| with_path(&path(name), e))
}

/// Moves the calling thread into the network namespace `ns` refers to (a file under
/// [`NETNS_DIR`], `/proc/PID/ns/net`, a container runtime's sandbox file...).
pub fn enter_file(ns: &File) -> io::Result<()> {
    // SAFETY: setns on a valid, open descriptor; it changes only the calling thread.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("setns: {e}")));
    }
    Ok(())
}

/// Runs `f` on a fresh thread inside the named network namespace and returns its result.
///
/// The thread is scoped, so `f` may borrow from the caller; the caller's thread never moves.
/// A panic in `f` comes back as an error.
pub fn in_netns<T: Send>(name: &str, f: impl FnOnce() -> T + Send) -> io::Result<T> {
    let p = path(name);
    let ns = File::open(&p).map_err(|e| with_path(&p, e))?;
    in_netns_file(&ns, f).map_err(|e| with_path(&p, e))
}

/// [`in_netns`] for a namespace given by an open file rather than a name.
pub fn in_netns_file<T: Send>(ns: &File, f: impl FnOnce() -> T + Send) -> io::Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| {
            enter_file(ns)?;
            Ok(f())
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("the thread inside the namespace panicked")))
    })
}

/// Makes `cmd`'s child enter the network namespace `ns` between fork and exec, so the program
/// starts inside it (cheaper than `ip netns exec`: one exec fewer, no /sys remount).
///
/// The command takes `ns` over: the descriptor stays open as long as `cmd` exists, so it is
/// still valid whenever `spawn` forks, and it is close-on-exec, so the program does not inherit
/// it. Further `pre_exec` hooks added after this one run inside the namespace.
pub fn pre_exec_enter(cmd: &mut Command, ns: File) {
    // SAFETY: the hook only calls setns(2) and reads errno, both async-signal-safe, and
    // allocates nothing; the descriptor is owned by the hook, so it is open in the child.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// The error with the namespace file's path in front, keeping its kind.
fn with_path(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt as _;
    use std::process::Command;

    use super::*;

    /// A namespace made with `ip netns add` for one test, deleted on drop (also after a failed
    /// assertion). The name holds the process id and a tag, so tests can run in parallel.
    struct TestNs(String);

    impl TestNs {
        fn new(tag: &str) -> TestNs {
            assert_eq!(unsafe { libc::geteuid() }, 0, "network namespace tests need root");
            let name = format!("bhnt-{}-{tag}", std::process::id());
            // A namespace of a killed earlier run with the same pid would make `add` fail.
            let _ = Command::new("ip").args(["netns", "del", &name]).stderr(std::process::Stdio::null()).status();
            let st = Command::new("ip").args(["netns", "add", &name]).status().expect("running ip");
            assert!(st.success(), "ip netns add {name}");
            TestNs(name)
        }
    }

    impl Drop for TestNs {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
        }
    }

    /// The namespace the calling thread is in, as (device, inode) of its nsfs file.
    fn current() -> (u64, u64) {
        let m = std::fs::metadata("/proc/thread-self/ns/net").expect("own netns");
        (m.dev(), m.ino())
    }

    fn of_file(p: &Path) -> (u64, u64) {
        let m = std::fs::metadata(p).expect("netns file");
        (m.dev(), m.ino())
    }

    #[test]
    fn in_netns_runs_inside_and_leaves_the_caller_where_it_was() {
        let ns = TestNs::new("in");
        let before = current();
        let inside = in_netns(&ns.0, current).expect("in_netns");
        assert_eq!(inside, of_file(&path(&ns.0)));
        assert_ne!(inside, before);
        assert_eq!(current(), before, "the caller's thread must not move");
        // Borrowing from the caller works: the thread is scoped.
        let local = String::from("borrowed");
        assert_eq!(in_netns(&ns.0, || local.len()).unwrap(), 8);
        let file = open(&ns.0).unwrap();
        assert_eq!(in_netns_file(&file, current).unwrap(), inside);
    }

    #[test]
    fn enter_moves_this_thread_only() {
        let ns = TestNs::new("enter");
        let before = current();
        let inside = std::thread::spawn({
            let name = ns.0.clone();
            move || {
                enter(&name).expect("enter");
                current()
            }
        })
        .join()
        .unwrap();
        assert_eq!(inside, of_file(&path(&ns.0)));
        assert_eq!(current(), before);
    }

    #[test]
    fn errors_name_the_namespace_file() {
        let name = format!("bhnt-{}-missing", std::process::id());
        let e = in_netns(&name, || ()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert!(e.to_string().contains(&format!("/var/run/netns/{name}")), "{e}");
        let e = enter(&name).unwrap_err();
        assert!(e.to_string().contains(&format!("/var/run/netns/{name}")), "{e}");
        // A file that is not a namespace: setns refuses it, and the message says which.
        let not_ns = File::open("/proc/self/status").unwrap();
        let e = in_netns_file(&not_ns, || ()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{e}");
        assert!(e.to_string().starts_with("setns: "), "{e}");
    }

    #[test]
    fn a_panic_inside_comes_back_as_an_error() {
        let ns = TestNs::new("panic");
        let e = in_netns(&ns.0, || panic!("on purpose")).unwrap_err();
        assert!(e.to_string().contains("panicked"), "{e}");
        assert!(e.to_string().contains(&ns.0), "{e}");
    }

    #[test]
    fn pre_exec_enter_starts_the_program_inside() {
        let ns = TestNs::new("exec");
        let mut cmd = Command::new("readlink");
        cmd.arg("/proc/self/ns/net");
        pre_exec_enter(&mut cmd, open(&ns.0).unwrap());
        // The command owns the descriptor: nothing here keeps a File open.
        let out = cmd.output().expect("readlink");
        assert!(out.status.success());
        let (_, ino) = of_file(&path(&ns.0));
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("net:[{ino}]"));
        // Run twice from the same Command: the hook's descriptor is still open.
        let again = cmd.output().expect("readlink again");
        assert_eq!(again.stdout, out.stdout);
    }
}
