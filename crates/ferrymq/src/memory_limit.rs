//! How much memory the broker may use: physical RAM, or less when the process runs in a
//! control group (a container) with a memory limit. The memory watermark is a fraction of
//! this, so a broker in a 2 GiB container on a 64 GiB host blocks publishers near 0.8 GiB
//! instead of being killed by the kernel's OOM killer at 2 GiB.
//!
//! cgroup v2: `memory.max` (`max` = no limit); cgroup v1: `memory.limit_in_bytes` (a huge
//! value = no limit). The limit of every ancestor up to the mount's root applies too, so the
//! smallest one counts.

use std::path::{Path, PathBuf};

/// v1 reports "no limit" as a page-rounded `i64::MAX`; anything this large is no limit.
const V1_UNLIMITED: u64 = 1 << 62;

/// Where the limit came from, for the start-up log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Physical RAM (`/proc/meminfo`).
    Physical,
    /// A control group's memory limit, lower than RAM.
    Cgroup,
}

/// The memory the broker may use and where that figure comes from; `None` when not even
/// physical RAM can be read.
pub fn effective() -> Option<(u64, Source)> {
    let physical = physical_memory();
    let cgroup = cgroup_limit(
        &std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default(),
        &std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default(),
        |p| std::fs::read_to_string(p).ok(),
    );
    choose(physical, cgroup)
}

fn choose(physical: Option<u64>, cgroup: Option<u64>) -> Option<(u64, Source)> {
    match (physical, cgroup) {
        (Some(p), Some(c)) if c < p => Some((c, Source::Cgroup)),
        (Some(p), _) => Some((p, Source::Physical)),
        (None, Some(c)) => Some((c, Source::Cgroup)),
        (None, None) => None,
    }
}

/// Physical RAM in bytes, from /proc/meminfo.
fn physical_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The smallest memory limit of the process's cgroup and its ancestors, v2 or v1, given the
/// text of `/proc/self/cgroup` and `/proc/self/mountinfo`; `read` reads a control file.
fn cgroup_limit(
    cgroup: &str,
    mountinfo: &str,
    read: impl Fn(&Path) -> Option<String>,
) -> Option<u64> {
    let mut best: Option<u64> = None;
    for line in cgroup.lines() {
        // `hierarchy-id:controllers:path`; the path itself may contain ':'.
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let v2 = id == "0" && controllers.is_empty();
        let v1 = controllers.split(',').any(|c| c == "memory");
        if !v1 && !v2 {
            continue;
        }
        let Some((mount, root)) = find_mount(mountinfo, v2) else {
            continue;
        };
        let file = if v2 {
            "memory.max"
        } else {
            "memory.limit_in_bytes"
        };
        if let Some(l) = smallest_on_path(&mount, &root, path, file, &read) {
            best = Some(best.map_or(l, |b| b.min(l)));
        }
    }
    best
}

/// The mount point and mount root of the cgroup2 hierarchy (`v2`) or of the v1 hierarchy
/// holding the memory controller.
fn find_mount(mountinfo: &str, v2: bool) -> Option<(PathBuf, String)> {
    mountinfo.lines().find_map(|l| {
        // `id parent major:minor root mount-point options [optional...] - fstype source super`
        let (left, right) = l.split_once(" - ")?;
        let f: Vec<&str> = left.split(' ').collect();
        let r: Vec<&str> = right.split(' ').collect();
        let (root, mount) = (*f.get(3)?, *f.get(4)?);
        let fstype = *r.first()?;
        let ok = if v2 {
            fstype == "cgroup2"
        } else {
            fstype == "cgroup" && r.get(2)?.split(',').any(|o| o == "memory")
        };
        ok.then(|| (PathBuf::from(unescape(mount)), unescape(root)))
    })
}

/// Mountinfo escapes spaces and a few other bytes as `\ooo` octal.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b.get(i + 1..i + 4).and_then(|d| {
            let t = std::str::from_utf8(d).ok()?;
            u8::from_str_radix(t, 8).ok()
        });
        match (b[i], octal) {
            (b'\\', Some(v)) => {
                out.push(v);
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads `file` in the cgroup at `path` and every ancestor within the mount, returning the
/// smallest real limit.
fn smallest_on_path(
    mount: &Path,
    root: &str,
    path: &str,
    file: &str,
    read: &impl Fn(&Path) -> Option<String>,
) -> Option<u64> {
    // Inside a cgroup namespace the mount's root is the process's own cgroup ("/"); on a
    // host it is "/" too and `path` is absolute in the hierarchy; a bind-mounted subtree
    // has the subtree as root, so the path is taken relative to it.
    let rel = match path.strip_prefix(root.trim_end_matches('/')) {
        Some(r) if root != "/" => r,
        _ => path,
    };
    let mut dir = mount.to_path_buf();
    let mut dirs = vec![dir.clone()];
    for part in rel.split('/').filter(|p| !p.is_empty() && *p != "..") {
        dir.push(part);
        dirs.push(dir.clone());
    }
    dirs.iter()
        .filter_map(|d| parse_limit(&read(&d.join(file))?))
        .min()
}

fn parse_limit(text: &str) -> Option<u64> {
    let t = text.trim();
    if t == "max" {
        return None;
    }
    t.parse::<u64>().ok().filter(|&v| v < V1_UNLIMITED)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn files(entries: &[(&str, &str)]) -> impl Fn(&Path) -> Option<String> {
        let m: HashMap<PathBuf, String> = entries
            .iter()
            .map(|(p, v)| (PathBuf::from(p), v.to_string()))
            .collect();
        move |p: &Path| m.get(p).cloned()
    }

    const V2_MOUNT: &str =
        "30 23 0:27 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw";
    const V1_MOUNT: &str =
        "35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory";

    #[test]
    fn cgroup_v2_memory_max_of_the_process_or_an_ancestor_is_the_limit() {
        let read = files(&[
            ("/sys/fs/cgroup/memory.max", "max\n"),
            ("/sys/fs/cgroup/app/memory.max", "2147483648\n"),
            ("/sys/fs/cgroup/app/broker/memory.max", "max\n"),
        ]);
        assert_eq!(
            cgroup_limit("0::/app/broker\n", V2_MOUNT, &read),
            Some(2 << 30),
            "the parent's limit applies to the child"
        );
        let unlimited = files(&[("/sys/fs/cgroup/memory.max", "max\n")]);
        assert_eq!(cgroup_limit("0::/\n", V2_MOUNT, &unlimited), None);
    }

    #[test]
    fn cgroup_v1_limit_in_bytes_counts_unless_it_means_no_limit() {
        let cg = "4:memory:/docker/abc\n1:cpu:/\n";
        let read = files(&[
            (
                "/sys/fs/cgroup/memory/memory.limit_in_bytes",
                "9223372036854771712",
            ),
            (
                "/sys/fs/cgroup/memory/docker/memory.limit_in_bytes",
                "9223372036854771712",
            ),
            (
                "/sys/fs/cgroup/memory/docker/abc/memory.limit_in_bytes",
                "536870912\n",
            ),
        ]);
        assert_eq!(cgroup_limit(cg, V1_MOUNT, &read), Some(512 << 20));
        let none = files(&[(
            "/sys/fs/cgroup/memory/docker/abc/memory.limit_in_bytes",
            "9223372036854771712",
        )]);
        assert_eq!(cgroup_limit(cg, V1_MOUNT, &none), None);
    }

    #[test]
    fn a_namespaced_mount_root_is_stripped_from_the_path() {
        // A container whose cgroup mount shows only its own subtree.
        let mount = "40 31 0:40 /kubepods/pod1 /sys/fs/cgroup rw - cgroup2 cgroup2 rw";
        let read = files(&[("/sys/fs/cgroup/memory.max", "1073741824")]);
        assert_eq!(
            cgroup_limit("0::/kubepods/pod1\n", mount, &read),
            Some(1 << 30)
        );
    }

    #[test]
    fn the_smaller_of_ram_and_the_cgroup_limit_is_used() {
        assert_eq!(
            choose(Some(8 << 30), Some(1 << 30)),
            Some((1 << 30, Source::Cgroup))
        );
        assert_eq!(
            choose(Some(8 << 30), Some(16 << 30)),
            Some((8 << 30, Source::Physical))
        );
        assert_eq!(
            choose(Some(8 << 30), None),
            Some((8 << 30, Source::Physical))
        );
        assert_eq!(choose(None, None), None);
    }

    #[test]
    fn garbage_in_control_files_is_no_limit() {
        let read = files(&[("/sys/fs/cgroup/memory.max", "lots\n")]);
        assert_eq!(cgroup_limit("0::/\n", V2_MOUNT, &read), None);
        assert_eq!(cgroup_limit("nonsense\n", "nonsense", &read), None);
        assert_eq!(unescape(r"/a\040b"), "/a b");
    }

    #[test]
    fn this_machine_reports_some_memory() {
        assert!(effective().is_some_and(|(m, _)| m > 0));
    }
}
