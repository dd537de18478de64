//! Dropping privileges once the programs are attached: the daemon switches to
//! an unprivileged user and keeps no capability. What it still needs stays
//! open: the ring buffer and the lost counter are memory-mapped, the metrics
//! socket is bound, the report file is open.

use std::ffi::CString;

use anyhow::{Context, Result, bail};

/// Switches to `user` (its uid, primary gid, no supplementary groups) and
/// verifies that no capability is left, effective or permitted.
pub fn drop_to(user: &str) -> Result<()> {
    let (uid, gid) = lookup(user)?;
    if uid == 0 {
        bail!("--user {user}: that is root; name an unprivileged user");
    }
    // SAFETY: plain syscalls on integers; order matters: groups and gid while
    // we still may change them, the uid last.
    unsafe {
        if libc::setgroups(0, std::ptr::null()) != 0 {
            return Err(std::io::Error::last_os_error()).context("setgroups");
        }
        if libc::setresgid(gid, gid, gid) != 0 {
            return Err(std::io::Error::last_os_error()).context("setresgid");
        }
        // Leaving uid 0 for a non-zero uid clears the permitted, effective
        // and ambient capability sets (capabilities(7), "Effect of user ID
        // changes on capabilities"), unless SECBIT_KEEP_CAPS is set, which we
        // never set.
        if libc::setresuid(uid, uid, uid) != 0 {
            return Err(std::io::Error::last_os_error()).context("setresuid");
        }
        // No set-uid binary or file capability can give them back.
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return Err(std::io::Error::last_os_error()).context("prctl(PR_SET_NO_NEW_PRIVS)");
        }
        // The uid change made us non-dumpable, which hands /proc/self to root;
        // we still read our own /proc/self/fdinfo (the programs' skipped-run
        // counters). The cost: processes of the same (dedicated) user may
        // ptrace us, which gives them nothing they could not read anyway.
        if libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0) != 0 {
            return Err(std::io::Error::last_os_error()).context("prctl(PR_SET_DUMPABLE)");
        }
    }
    let (eff, prm) = capabilities();
    if eff != 0 || prm != 0 {
        bail!(
            "capabilities remain after dropping to {user}: effective {eff:#x}, permitted {prm:#x}"
        );
    }
    Ok(())
}

fn lookup(user: &str) -> Result<(libc::uid_t, libc::gid_t)> {
    let name = CString::new(user).context("user name contains a NUL byte")?;
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: getpwnam_r writes into `pwd` and `buf`, which we own and whose
    // sizes we pass; `result` tells whether an entry was found.
    let rc = unsafe {
        libc::getpwnam_r(
            name.as_ptr(),
            &raw mut pwd,
            buf.as_mut_ptr(),
            buf.len(),
            &raw mut result,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::from_raw_os_error(rc))
            .with_context(|| format!("look up user {user}"));
    }
    if result.is_null() {
        bail!("--user {user}: no such user");
    }
    Ok((pwd.pw_uid, pwd.pw_gid))
}

/// (CapEff, CapPrm) of this process, from /proc/self/status.
pub fn capabilities() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
            .unwrap_or(u64::MAX)
    };
    (field("CapEff:"), field("CapPrm:"))
}
