//! What of the host's `/etc` the system directories need: the targets of the symlinks under
//! `/usr`, `/lib`… that lead into `/etc` (Debian's OpenJDK keeps `conf/security/java.security`
//! there, Maven its `m2.conf`, Python its `sitecustomize.py`). A tool bound in read-only
//! with its links dangling crashes at start; with them, it runs as on the host.
//!
//! Walking the system directories for symlinks takes ~0.3 s warm, seconds cold, so it is
//! done once and the result kept in the state directory, keyed by what would change it: the
//! system directories themselves and the package databases (installing a package is what
//! puts new links there). Secrets never enter, whatever points at them.

use std::collections::hash_map::DefaultHasher;
use std::collections::BTreeSet;
use std::hash::{Hash, Hasher};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::view_memo::consulted;

/// Package databases: one changes whenever a package is installed or removed.
const PACKAGE_DBS: [&str; 6] = [
    "/var/lib/dpkg/status",
    "/var/lib/rpm",
    "/usr/lib/sysimage/rpm",
    "/lib/apk/db/installed",
    "/var/lib/pacman/local",
    "/nix/var/nix/db/db.sqlite",
];

/// Beneath `/etc`: what no jail is shown, whatever points at it or asks for it (`--ro`).
/// Besides these, a file that is not world-readable (or a directory not world-searchable)
/// is left out: secrets are kept from other users by their modes.
const SECRETS: [&str; 24] = [
    "shadow",
    "shadow-",
    "gshadow",
    "gshadow-",
    "sudoers",
    "sudoers.d",
    "doas.conf",
    "ssh",
    "ssl/private",
    "pki/tls/private",
    "pki/CA/private",
    "krb5.keytab",
    "security/opasswd",
    "toolbox",
    "NetworkManager/system-connections",
    "wpa_supplicant",
    "wireguard",
    "openvpn",
    "ipsec.secrets",
    "ipsec.d/private",
    "ppp",
    "docker",
    "containers/auth.json",
    "credstore",
];

/// Whether `path` (absolute, beneath `/etc`) is a secret or lies in one.
/// [`is_secret`] of a clean absolute path given as a string.
pub fn is_secret_str(path: &str) -> bool {
    match path.strip_prefix("/etc") {
        Some("") => false,
        Some(rest) if rest.starts_with('/') => SECRETS
            .iter()
            .any(|secret| crate::home::within(&rest[1..], secret)),
        _ => false,
    }
}

pub fn is_secret(path: &Path) -> bool {
    let Ok(rest) = path.strip_prefix("/etc") else {
        return false;
    };
    match rest.to_str() {
        Some(rest) => SECRETS
            .iter()
            .any(|secret| crate::home::within(rest, secret)),
        None => SECRETS.iter().any(|secret| rest.starts_with(secret)),
    }
}

/// One file the system directories' links lead to in `/etc`, as the snapshot needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcFile {
    pub path: PathBuf,
    pub mode: u32,
    pub size: u64,
}

/// The files beneath `/etc` that symlinks under `system` lead to (a link to a directory
/// brings what is in it), secrets and what is not world-readable left out: from the cache
/// when it is current, else found and cached. The cache is current when the system
/// directories and package databases are as they were (the key) and so is every directory
/// the files were found in (their mtimes: a file added or removed there changes it); the
/// files' own contents are the snapshot's to check, as for every /etc entry.
/// Grouped by the link target they come from (a file, or a directory walked), only the
/// targets `wanted` keeps: a target the policy's own /etc list shows already is skipped whole
/// (ssl/certs: hundreds of files a job would parse for nothing).
pub fn files(system: &[PathBuf], wanted: impl Fn(&Path) -> bool) -> Vec<(PathBuf, Vec<EtcFile>)> {
    let key = key(system);
    let cache = crate::etc_snapshot::state_dir().join("etc-links");
    if let Some(found) = read_cache(&cache, &key, &wanted) {
        return found;
    }
    let mut dirs = Vec::new();
    let mut found = Vec::new();
    let mut count = 0;
    for target in scan(system) {
        let mut files = Vec::new();
        walk(
            &target,
            FILES_MAX.saturating_sub(count),
            &mut dirs,
            &mut files,
        );
        count += files.len();
        found.push((target, files));
    }
    if let Err(err) = write_cache(&cache, &key, &dirs, &found) {
        tracing::debug!("cache the /etc links of the system directories: {err}");
    }
    found.retain(|(target, _)| wanted(target));
    found
}

/// The most files the links bring in (/etc holds small things; a link to something huge is
/// a mistake not to copy into every jail).
const FILES_MAX: usize = 4096;

fn key(system: &[PathBuf]) -> String {
    let mut hasher = DefaultHasher::new();
    let stamp = |path: &Path, hasher: &mut DefaultHasher| {
        consulted(path);
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            (
                path,
                meta.dev(),
                meta.ino(),
                meta.mtime(),
                meta.mtime_nsec(),
                meta.ctime(),
            )
                .hash(hasher);
        }
    };
    for dir in system {
        stamp(dir, &mut hasher);
    }
    for db in PACKAGE_DBS {
        stamp(Path::new(db), &mut hasher);
    }
    format!("{:016x}", hasher.finish())
}

/// A directory's mtime, as the cache records it.
fn mtime(path: &Path) -> Option<(i64, i64)> {
    consulted(path);
    std::fs::metadata(path)
        .ok()
        .map(|meta| (meta.mtime(), meta.mtime_nsec()))
}

fn read_cache(
    path: &Path,
    key: &str,
    wanted: &dyn Fn(&Path) -> bool,
) -> Option<Vec<(PathBuf, Vec<EtcFile>)>> {
    consulted(path);
    let meta = std::fs::symlink_metadata(path).ok()?;
    // Ours alone: anyone else could have planted what jails then show.
    if !meta.is_file() || meta.uid() != 0 || meta.mode() & 0o022 != 0 {
        return None;
    }
    let text = std::fs::read_to_string(path).ok()?;
    let mut lines = text.lines();
    if lines.next()? != format!("key {key}") {
        return None;
    }
    let mut found: Vec<(PathBuf, Vec<EtcFile>)> = Vec::new();
    // Whether the files listed now belong to a target that is wanted (none before the
    // first target).
    let mut keep = None;
    for line in lines {
        if let Some(target) = line.strip_prefix("t ") {
            let wanted = wanted(Path::new(target));
            if wanted {
                found.push((PathBuf::from(target), Vec::new()));
            }
            keep = Some(wanted);
            continue;
        }
        if line.starts_with("f ") && !keep? {
            continue;
        }
        let mut fields = line.splitn(4, ' ');
        let (kind, a, b, rest) = (
            fields.next()?,
            fields.next()?,
            fields.next()?,
            fields.next()?,
        );
        let path = PathBuf::from(rest);
        match kind {
            "d" => {
                if mtime(&path) != Some((a.parse().ok()?, b.parse().ok()?)) {
                    return None;
                }
            }
            // Checked for secrets where a file is shown (the view): checking all here
            // costs more than the rest of the read.
            "f" => found.last_mut()?.1.push(EtcFile {
                path,
                mode: a.parse().ok()?,
                size: b.parse().ok()?,
            }),
            _ => return None,
        }
    }
    Some(found)
}

fn write_cache(
    path: &Path,
    key: &str,
    dirs: &[(PathBuf, (i64, i64))],
    found: &[(PathBuf, Vec<EtcFile>)],
) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".etc-links.{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(&tmp)?;
    let line_safe = |path: &Path| {
        path.to_str()
            .filter(|p| !p.contains('\n'))
            .map(str::to_string)
    };
    let mut text = format!("key {key}\n");
    for (path, (sec, nsec)) in dirs {
        if let Some(path) = line_safe(path) {
            text.push_str(&format!("d {sec} {nsec} {path}\n"));
        }
    }
    for (target, files) in found {
        let Some(target) = line_safe(target) else {
            continue;
        };
        text.push_str(&format!("t {target}\n"));
        for file in files {
            if let Some(path) = line_safe(&file.path) {
                text.push_str(&format!("f {} {} {path}\n", file.mode, file.size));
            }
        }
    }
    file.write_all(text.as_bytes())?;
    drop(file);
    std::fs::rename(&tmp, path)
}

/// Walk the system directories (not following symlinks, not leaving their filesystems) for
/// symlinks whose target resolves beneath `/etc`.
fn scan(system: &[PathBuf]) -> Vec<PathBuf> {
    let mut found = BTreeSet::new();
    let mut seen_roots = BTreeSet::new();
    for root in system {
        let Ok(meta) = std::fs::symlink_metadata(root) else {
            continue;
        };
        // /bin -> usr/bin: walked as /usr.
        if !meta.is_dir() || !seen_roots.insert((meta.dev(), meta.ino())) {
            continue;
        }
        let mut stack = vec![root.clone()];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let Ok(kind) = entry.file_type() else {
                    continue;
                };
                let path = entry.path();
                if kind.is_dir() {
                    if entry.metadata().is_ok_and(|m| m.dev() == meta.dev()) {
                        stack.push(path);
                    }
                } else if kind.is_symlink() {
                    // Only a target that names etc can lead there (cheap: no resolution
                    // for the thousands of others).
                    let names_etc = std::fs::read_link(&path).is_ok_and(|t| {
                        t.as_os_str()
                            .as_encoded_bytes()
                            .windows(3)
                            .any(|w| w == b"etc")
                    });
                    if !names_etc {
                        continue;
                    }
                    if let Ok(resolved) = path.canonicalize() {
                        if resolved.starts_with("/etc")
                            && resolved != Path::new("/etc")
                            && !is_secret(&resolved)
                        {
                            found.insert(resolved);
                        }
                    }
                }
            }
        }
    }
    // A directory covers what lies beneath it.
    let mut kept: Vec<PathBuf> = Vec::new();
    for path in found {
        if !kept.iter().any(|dir| path.starts_with(dir)) {
            kept.push(path);
        }
    }
    kept
}

/// The files of `path` beneath `/etc` a jail may be shown: itself if it is a
/// world-readable file, or the world-readable files beneath it if it is a world-searchable
/// directory (symlinks followed, secrets left out), at most `limit`. The directories
/// walked go to `dirs` with their mtimes.
fn walk(
    path: &Path,
    limit: usize,
    dirs: &mut Vec<(PathBuf, (i64, i64))>,
    files: &mut Vec<EtcFile>,
) {
    let mut stack = vec![path.to_path_buf()];
    while let Some(path) = stack.pop() {
        if is_secret(&path) || files.len() >= limit {
            continue;
        }
        consulted(&path);
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        let mode = meta.mode() & 0o777;
        if meta.is_file() && mode & 0o004 != 0 {
            files.push(EtcFile {
                path,
                mode,
                size: meta.len(),
            });
        } else if meta.is_dir() && mode & 0o001 != 0 {
            dirs.push((path.clone(), (meta.mtime(), meta.mtime_nsec())));
            if let Ok(entries) = std::fs::read_dir(&path) {
                let mut names: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
                names.sort();
                stack.extend(names.into_iter().rev());
            }
        }
    }
}

/// [`walk`], for one path a request names (`--ro /etc/…`).
pub fn shown_files(path: &Path, limit: usize) -> Vec<EtcFile> {
    let mut files = Vec::new();
    walk(path, limit, &mut Vec::new(), &mut files);
    files
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_known_by_path_whatever_lies_beneath() {
        for secret in [
            "/etc/shadow",
            "/etc/ssh/ssh_host_ed25519_key",
            "/etc/ssl/private",
            "/etc/ssl/private/snakeoil.key",
            "/etc/sudoers.d/admins",
            "/etc/toolbox/policies/default.toml",
        ] {
            assert!(is_secret(Path::new(secret)), "{secret}");
        }
        for shown in [
            "/etc/java-17-openjdk/security/java.security",
            "/etc/maven/m2.conf",
            "/etc/ssl/certs/ca-certificates.crt",
            "/etc/shadowsocks.json.example",
            "/usr/share/shadow",
        ] {
            assert!(!is_secret(Path::new(shown)), "{shown}");
        }
    }

    #[test]
    fn links_into_etc_are_found_and_secrets_and_the_rest_left_out() {
        // A fake system directory whose links lead into the real /etc (the only /etc there
        // is): to a file every host has, to a secret, and elsewhere.
        let dir = tempfile::tempdir().expect("tempdir");
        let usr = dir.path().join("usr");
        std::fs::create_dir_all(usr.join("lib/tool/conf")).expect("mkdir");
        std::os::unix::fs::symlink("/etc/passwd", usr.join("lib/tool/conf/users")).expect("link");
        std::os::unix::fs::symlink(
            "../../../../../../../../etc/hostname",
            usr.join("lib/tool/conf/name"),
        )
        .expect("link");
        std::os::unix::fs::symlink("/etc/shadow", usr.join("lib/tool/conf/secret")).expect("link");
        std::os::unix::fs::symlink("/usr/share", usr.join("lib/tool/share")).expect("link");
        std::os::unix::fs::symlink("/etc/no-such-file-here", usr.join("lib/tool/dangling"))
            .expect("link");
        let found = scan(&[usr]);
        assert!(found.contains(&PathBuf::from("/etc/passwd")), "{found:?}");
        if Path::new("/etc/hostname").exists() {
            assert!(found.contains(&PathBuf::from("/etc/hostname")), "{found:?}");
        }
        assert!(!found.iter().any(|p| p.ends_with("shadow")), "{found:?}");
        assert!(found.iter().all(|p| p.starts_with("/etc")), "{found:?}");
    }
}
