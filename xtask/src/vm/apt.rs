//! Debian packages for the VM tier: QEMU (installed when missing) and the
//! guest kernels (downloaded and unpacked into target/vm, never installed).
//!
//! Each guest kernel's suite gets a private apt state under
//! target/vm/apt/<suite>: its own sources.list (that suite only), package
//! lists, cache and an empty dpkg status, so nothing of it can reach the
//! machine's packages; it is only ever used by `apt-cache` and
//! `apt-get download`. QEMU comes from the machine's own suites (state in
//! target/vm/apt/host: the machine's sources plus `<codename>-backports`,
//! whose QEMU coexists with this machine's newer qemu-utils where bookworm's
//! 7.2 would remove it). The machine's apt configuration and its lists in
//! /var/lib/apt are left alone.

use crate::util::{self, Result};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

/// The meta-package whose dependency names the current cloud kernel image.
const KERNEL_META: &str = "linux-image-cloud-amd64";
/// The QEMU package and the binary it provides.
pub const QEMU_PACKAGE: &str = "qemu-system-x86";
pub const QEMU_BINARY: &str = "qemu-system-x86_64";
const DEBIAN: &str = "http://deb.debian.org/debian";
const DEBIAN_SECURITY: &str = "http://deb.debian.org/debian-security";
/// Bookworm's keyring (2023.3+deb12u2) also verifies bullseye's, trixie's
/// and sid's Release files (sid is signed with the 12 and 13 keys).
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";
/// Package lists older than this are refreshed (if the network allows).
const LISTS_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// A guest kernel: the newest cloud kernel of one Debian suite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Guest {
    /// The kernel series the suite carries (the name on the command line);
    /// a suite that moved on is reported, and its kernel is tested anyway.
    pub series: &'static str,
    /// The suite, and the name of its private apt state.
    pub suite: &'static str,
    /// Archive and suite of each line of its sources.list.
    pub sources: &'static [(&'static str, &'static str)],
}

/// Every guest, in the order they are started (the slowest first).
pub const GUESTS: [Guest; 5] = [
    Guest {
        series: "6.12",
        suite: "bookworm-backports",
        sources: &[(DEBIAN, "bookworm-backports")],
    },
    Guest {
        series: "7.3",
        suite: "trixie-backports",
        sources: &[(DEBIAN, "trixie-backports")],
    },
    Guest {
        series: "7.2",
        suite: "sid",
        sources: &[(DEBIAN, "sid")],
    },
    Guest {
        series: "6.1",
        suite: "bookworm",
        sources: &[(DEBIAN, "bookworm"), (DEBIAN_SECURITY, "bookworm-security")],
    },
    // Its kernel is only updated in the security suite now.
    Guest {
        series: "5.10",
        suite: "bullseye-security",
        sources: &[(DEBIAN_SECURITY, "bullseye-security")],
    },
];

/// The guest named `name` (its series or its suite).
pub fn guest_named(name: &str) -> Option<Guest> {
    GUESTS
        .iter()
        .find(|g| g.series == name || g.suite == name)
        .copied()
}

/// A kernel resolved from a suite's package lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelPackage {
    /// `linux-image-<abi>`.
    pub name: String,
    pub version: String,
    /// e.g. `7.2.13+deb14-cloud-amd64`.
    pub abi: String,
    pub layout: Layout,
}

/// Where a kernel's files are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `linux-image-<abi>` holds `/boot/vmlinuz-<abi>` and `/boot/config-<abi>`.
    Boot,
    /// (Debian's 7.x kernels) `linux-image-<abi>` is empty and depends on
    /// `linux-binary-<abi>` (`/usr/lib/modules/<abi>/vmlinuz`) and
    /// `linux-base-<abi>` (`/usr/lib/modules/<abi>/config`).
    Split,
}

impl KernelPackage {
    /// The packages to download.
    pub fn parts(&self) -> Vec<String> {
        match self.layout {
            Layout::Boot => vec![self.name.clone()],
            Layout::Split => vec![
                format!("linux-binary-{}", self.abi),
                format!("linux-base-{}", self.abi),
            ],
        }
    }

    /// Paths of the kernel image and its config inside the unpacked parts.
    fn files(&self) -> (PathBuf, PathBuf) {
        match self.layout {
            Layout::Boot => (
                PathBuf::from(format!("boot/vmlinuz-{}", self.abi)),
                PathBuf::from(format!("boot/config-{}", self.abi)),
            ),
            Layout::Split => {
                let d = PathBuf::from(format!("usr/lib/modules/{}", self.abi));
                (d.join("vmlinuz"), d.join("config"))
            }
        }
    }

    /// `major.minor` of the upstream version (`7.2` of `7.2.13-1`).
    pub fn series(&self) -> String {
        self.version
            .split(['.', '-', '+', '~'])
            .take(2)
            .collect::<Vec<_>>()
            .join(".")
    }
}

/// An unpacked kernel in the cache.
#[derive(Debug, Clone)]
pub struct Kernel {
    pub package: KernelPackage,
    pub vmlinuz: PathBuf,
    pub config: PathBuf,
}

/// Whose sources a private apt state uses.
enum Sources {
    /// The machine's own (sources.list.d) plus its backports.
    Machine { codename: String, backports: String },
    /// Only these lines.
    Own,
}

pub struct Apt {
    dir: PathBuf,
    sources: Sources,
    /// What the lists cover, for messages.
    what: String,
    /// `apt-get update` ran in this process already.
    updated: std::cell::Cell<bool>,
}

impl Apt {
    /// The state QEMU is installed with (target/vm/apt/host): the machine's
    /// sources plus `<codename>-backports` when the machine does not list it.
    pub fn host(dir: &Path) -> Result<Self> {
        let os = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
        let codename = os_release_value(&os, "VERSION_CODENAME")
            .filter(|_| os_release_value(&os, "ID").as_deref() == Some("debian"))
            .ok_or(
                "vm-test installs QEMU and fetches Debian cloud kernels with apt: this machine \
                 is not Debian (no ID=debian / VERSION_CODENAME in /etc/os-release)",
            )?;
        let backports = format!("{codename}-backports");
        let list = if system_lists_suite(&backports) {
            format!("# {backports} is in the machine's own sources\n")
        } else {
            format!("deb [signed-by={KEYRING}] {DEBIAN} {backports} main\n")
        };
        let apt = Self::prepare(
            dir,
            &list,
            Sources::Machine {
                codename: codename.clone(),
                backports,
            },
            format!("the machine's sources ({codename})"),
        )?;
        Ok(apt)
    }

    /// The private state of `guest`'s suite (target/vm/apt/<suite>).
    pub fn suite(vm_apt: &Path, guest: &Guest) -> Result<Self> {
        let list: String = guest
            .sources
            .iter()
            .map(|(archive, suite)| format!("deb [signed-by={KEYRING}] {archive} {suite} main\n"))
            .collect();
        Self::prepare(
            &vm_apt.join(guest.suite),
            &list,
            Sources::Own,
            guest.suite.to_string(),
        )
    }

    fn prepare(dir: &Path, list: &str, sources: Sources, what: String) -> Result<Self> {
        for d in [
            "lists/partial",
            "cache/archives/partial",
            "sources.list.d",
            "preferences.d",
        ] {
            let p = dir.join(d);
            std::fs::create_dir_all(&p).map_err(|e| format!("create {}: {e}", p.display()))?;
        }
        let write = |name: &str, text: &str| {
            let p = dir.join(name);
            std::fs::write(&p, text).map_err(|e| format!("write {}: {e}", p.display()))
        };
        write("sources.list", list)?;
        if matches!(sources, Sources::Own) {
            // No package is ever installed from here: an empty status keeps
            // the machine's installed packages out of every answer.
            write("status", "")?;
        }
        let what = match &sources {
            Sources::Machine { backports, .. } => format!("{what} plus {backports}"),
            Sources::Own => what,
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            sources,
            what,
            updated: std::cell::Cell::new(false),
        })
    }

    /// The machine's codename and its backports suite (host state only).
    fn machine(&self) -> (&str, &str) {
        match &self.sources {
            Sources::Machine {
                codename,
                backports,
            } => (codename, backports),
            Sources::Own => ("", ""),
        }
    }

    fn options(&self) -> Vec<String> {
        let d = self.dir.display();
        let mut o = vec![
            format!("Dir::Etc::SourceList={d}/sources.list"),
            format!("Dir::State::Lists={d}/lists"),
            format!("Dir::Cache={d}/cache"),
            // Root downloads into target/ (the _apt user may not reach it).
            "APT::Sandbox::User=root".into(),
            "Acquire::Languages=none".into(),
            "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false".into(),
            "Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled=false".into(),
            "Acquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled=false".into(),
        ];
        if let Sources::Own = self.sources {
            // Nothing of the machine's: sources, pins, installed packages.
            o.extend([
                format!("Dir::Etc::SourceParts={d}/sources.list.d"),
                format!("Dir::Etc::Preferences={d}/preferences"),
                format!("Dir::Etc::PreferencesParts={d}/preferences.d"),
                format!("Dir::State::status={d}/status"),
            ]);
        }
        o.into_iter().flat_map(|o| ["-o".to_string(), o]).collect()
    }

    fn cmd(&self, tool: &str, release: Option<&str>) -> Command {
        let mut c = Command::new(tool);
        c.args(self.options())
            .env("DEBIAN_FRONTEND", "noninteractive");
        if let Some(r) = release {
            c.args(["-t", r]);
        }
        c
    }

    fn stamp(&self) -> PathBuf {
        self.dir.join("lists/.updated")
    }

    fn have_lists(&self) -> bool {
        std::fs::read_dir(self.dir.join("lists")).is_ok_and(|rd| {
            rd.flatten()
                .any(|e| e.file_name().to_string_lossy().contains("_Packages"))
        })
    }

    /// Runs `apt-get update` on the private lists when they are missing,
    /// older than a day, or `force` (at most once per run). A failed refresh
    /// of existing lists is a warning (offline runs keep working from the
    /// cache).
    pub fn ensure_lists(&self, force: bool) -> Result<()> {
        let age = std::fs::metadata(self.stamp())
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok());
        let fresh = self.have_lists() && age.is_some_and(|a| a < LISTS_MAX_AGE);
        if (fresh && !force) || self.updated.get() {
            return Ok(());
        }
        eprintln!(
            "xtask: vm-test: apt-get update ({}; private lists in {})",
            self.what,
            self.dir.join("lists").display(),
        );
        let t0 = Instant::now();
        let r = util::run_output(self.cmd("apt-get", None).arg("update"));
        match r {
            // apt-get update exits 0 on some failures (a suite it could not
            // fetch or verify): those count as failures here.
            Ok(out)
                if !out
                    .lines()
                    .any(|l| l.starts_with("E: ") || l.starts_with("Err:")) =>
            {
                eprintln!(
                    "xtask: vm-test: package lists updated in {:.1} s",
                    t0.elapsed().as_secs_f64()
                );
                if out.contains("W: ") {
                    eprint!("{out}");
                }
                std::fs::write(self.stamp(), "")
                    .map_err(|e| format!("write {}: {e}", self.stamp().display()))?;
                self.updated.set(true);
                Ok(())
            }
            r => {
                let e = r.unwrap_or_else(|e| e);
                let hint = if e.contains("NO_PUBKEY") || e.contains("not signed") {
                    format!(
                        "\n{KEYRING} cannot verify {}: a newer debian-archive-keyring is needed \
                         (its .gpg files from a suite this keyring verifies)",
                        self.what
                    )
                } else {
                    String::new()
                };
                if self.have_lists() {
                    eprintln!(
                        "xtask: vm-test: warning: apt-get update ({}) failed, using the old lists:\n{e}{hint}",
                        self.what
                    );
                    Ok(())
                } else {
                    Err(format!("apt-get update ({}) failed:\n{e}{hint}", self.what))
                }
            }
        }
    }

    /// The suite's current cloud kernel, e.g. `linux-image-6.1.0-57-cloud-amd64`
    /// 6.1.192-3, and which packages hold its files.
    pub fn resolve_kernel(&self) -> Result<KernelPackage> {
        let deps = util::run_output(self.cmd("apt-cache", None).args(["depends", KERNEL_META]))?;
        let name = kernel_dependency(&deps).ok_or_else(|| {
            format!(
                "`apt-cache depends {KERNEL_META}` ({}) names no linux-image package:\n{deps}",
                self.what
            )
        })?;
        let version = self.candidate(&name)?;
        let abi = name
            .strip_prefix("linux-image-")
            .unwrap_or(&name)
            .to_string();
        let image_deps = util::run_output(self.cmd("apt-cache", None).args(["depends", &name]))?;
        let layout = layout_of(&image_deps, &abi);
        let pkg = KernelPackage {
            name,
            version,
            abi,
            layout,
        };
        // The parts come from the same source build: same version.
        if layout == Layout::Split {
            for part in pkg.parts() {
                let v = self.candidate(&part)?;
                if v != pkg.version {
                    return Err(format!(
                        "{} {} needs {part} of the same version, the lists have {v} ({})",
                        pkg.name, pkg.version, self.what
                    ));
                }
            }
        }
        Ok(pkg)
    }

    fn candidate(&self, name: &str) -> Result<String> {
        let policy = util::run_output(self.cmd("apt-cache", None).args(["policy", name]))?;
        candidate(&policy)
            .ok_or_else(|| format!("no version of {name} in {}:\n{policy}", self.what))
    }

    /// Downloads and unpacks `pkg` into `cache/<name>/` (vmlinuz, config)
    /// unless it is there.
    pub fn fetch_kernel(&self, pkg: &KernelPackage, cache: &Path) -> Result<Kernel> {
        let dest = cache.join(&pkg.name);
        let stamp = dest.join("PACKAGE");
        let specs: Vec<String> = pkg
            .parts()
            .iter()
            .map(|p| format!("{p}={}", pkg.version))
            .collect();
        let want = format!("{}\n", specs.join(" "));
        if std::fs::read_to_string(&stamp).is_ok_and(|s| s == want) {
            return unpacked(&dest, pkg);
        }
        let work = cache.join(format!(".download-{}", pkg.name));
        let _ = std::fs::remove_dir_all(&work);
        let tmp = cache.join(format!(".{}.tmp", pkg.name));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&work).map_err(|e| format!("create {}: {e}", work.display()))?;
        std::fs::create_dir_all(&tmp).map_err(|e| format!("create {}: {e}", tmp.display()))?;
        let t0 = Instant::now();
        util::run_output(
            self.cmd("apt-get", None)
                .arg("download")
                .args(&specs)
                .current_dir(&work),
        )
        .map_err(|e| format!("apt-get download {}: {e}", specs.join(" ")))?;
        let debs: Vec<PathBuf> = std::fs::read_dir(&work)
            .map_err(|e| e.to_string())?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "deb"))
            .collect();
        if debs.len() != specs.len() {
            return Err(format!(
                "apt-get download {} left {} .deb files in {}",
                specs.join(" "),
                debs.len(),
                work.display()
            ));
        }
        let unpack = tmp.join("unpack");
        let mut size = 0;
        for deb in &debs {
            size += std::fs::metadata(deb).map(|m| m.len()).unwrap_or(0);
            util::run_output(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&unpack))?;
        }
        // Only the kernel and its config are needed: the guest loads no modules.
        let (vmlinuz, config) = pkg.files();
        for (from, to) in [(vmlinuz, "vmlinuz"), (config, "config")] {
            let from = unpack.join(from);
            std::fs::rename(&from, tmp.join(to)).map_err(|e| {
                format!(
                    "{} has no {} ({e})",
                    specs.join(" "),
                    from.strip_prefix(&unpack).unwrap_or(&from).display()
                )
            })?;
        }
        std::fs::remove_dir_all(&unpack)
            .map_err(|e| format!("remove {}: {e}", unpack.display()))?;
        std::fs::write(tmp.join("PACKAGE"), &want).map_err(|e| e.to_string())?;
        let _ = std::fs::remove_dir_all(&dest);
        std::fs::rename(&tmp, &dest)
            .map_err(|e| format!("rename {} -> {}: {e}", tmp.display(), dest.display()))?;
        let _ = std::fs::remove_dir_all(&work);
        eprintln!(
            "xtask: vm-test: downloaded {} ({:.1} MB) and unpacked it into {} in {:.1} s",
            specs.join(" "),
            size as f64 / 1e6,
            dest.display(),
            t0.elapsed().as_secs_f64()
        );
        unpacked(&dest, pkg)
    }

    /// Installs QEMU if `qemu-system-x86_64` is not on PATH; returns its path.
    pub fn ensure_qemu(&self) -> Result<PathBuf> {
        if let Some(p) = find_in_path(QEMU_BINARY) {
            return Ok(p);
        }
        if let Sources::Own = self.sources {
            // A guest suite's state is for downloads only.
            return Err(format!(
                "{QEMU_PACKAGE} is only installed from the machine's own suites, not {}",
                self.what
            ));
        }
        if !util::is_root() {
            return Err(format!(
                "{QEMU_BINARY} not found. Install the Debian package {QEMU_PACKAGE} \
                 (as root: apt-get install --no-install-recommends {QEMU_PACKAGE}, \
                 from {} on a machine with backports' qemu-utils), or run vm-test as root \
                 to have it installed",
                self.machine().1
            ));
        }
        self.ensure_lists(false)?;
        let release = match self.pick_qemu_release() {
            Ok(r) => r,
            Err(_) => {
                // Perhaps the lists are stale (a version vanished from the mirror).
                self.ensure_lists(true)?;
                self.pick_qemu_release()?
            }
        };
        let from = release.unwrap_or(self.machine().0).to_string();
        eprintln!(
            "xtask: vm-test: installing {QEMU_PACKAGE} from {from}: \
             apt-get install -y --no-install-recommends{} {QEMU_PACKAGE}",
            release.map(|r| format!(" -t {r}")).unwrap_or_default()
        );
        let t0 = Instant::now();
        let install = |apt: &Apt| {
            util::run_status(apt.cmd("apt-get", release).args([
                "install",
                "-y",
                "--no-install-recommends",
                QEMU_PACKAGE,
            ]))
        };
        if install(self).is_err() {
            eprintln!("xtask: vm-test: install failed; refreshing the package lists and retrying");
            self.ensure_lists(true)?;
            install(self)?;
        }
        let secs = t0.elapsed().as_secs_f64();
        // The downloaded .debs are not needed any more.
        if let Ok(rd) = std::fs::read_dir(self.dir.join("cache/archives")) {
            for e in rd.flatten() {
                if e.path().extension().is_some_and(|x| x == "deb") {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        let path = find_in_path(QEMU_BINARY).ok_or_else(|| {
            format!("installed {QEMU_PACKAGE} but {QEMU_BINARY} is still not on PATH")
        })?;
        eprintln!("xtask: vm-test: installed {QEMU_PACKAGE} from {from} in {secs:.1} s");
        Ok(path)
    }

    /// The target release to install QEMU from: the default one unless that
    /// would remove installed packages (bookworm's 7.2 removes a newer
    /// qemu-utils), then backports.
    fn pick_qemu_release(&self) -> Result<Option<&str>> {
        let mut refused = Vec::new();
        let (codename, backports) = self.machine();
        for release in [None, Some(backports)] {
            let sim = util::run_output(self.cmd("apt-get", release).args([
                "install",
                "-s",
                "--no-install-recommends",
                QEMU_PACKAGE,
            ]));
            let from = release.unwrap_or(codename);
            match sim {
                Ok(out) => {
                    let removed = removals(&out);
                    if removed.is_empty() {
                        return Ok(release);
                    }
                    refused.push(format!(
                        "from {from} it would remove {}",
                        removed.join(", ")
                    ));
                }
                Err(e) => refused.push(format!("from {from}: {e}")),
            }
        }
        Err(format!(
            "cannot install {QEMU_PACKAGE} without breaking installed packages:\n  {}",
            refused.join("\n  ")
        ))
    }
}

fn unpacked(dir: &Path, pkg: &KernelPackage) -> Result<Kernel> {
    let k = Kernel {
        package: pkg.clone(),
        vmlinuz: dir.join("vmlinuz"),
        config: dir.join("config"),
    };
    for p in [&k.vmlinuz, &k.config] {
        if !p.is_file() {
            return Err(format!("{} is missing (from {})", p.display(), pkg.name));
        }
    }
    Ok(k)
}

pub fn find_in_path(bin: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/local/bin")])
        .map(|d| d.join(bin))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

fn os_release_value(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let v = l.strip_prefix(key)?.strip_prefix('=')?;
        let v = v.trim().trim_matches('"');
        (!v.is_empty()).then(|| v.to_string())
    })
}

/// Whether the machine's apt sources (one-line or deb822) name `suite`.
fn system_lists_suite(suite: &str) -> bool {
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(rd) = std::fs::read_dir("/etc/apt/sources.list.d") {
        files.extend(
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "list" || x == "sources")),
        );
    }
    files
        .iter()
        .any(|f| std::fs::read_to_string(f).is_ok_and(|t| sources_name_suite(&t, suite)))
}

fn sources_name_suite(text: &str, suite: &str) -> bool {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .any(|l| l.split_whitespace().any(|w| w == suite))
}

/// The names after `Depends:` in `apt-cache depends` output, in order.
fn depends(out: &str) -> impl Iterator<Item = &str> {
    out.lines().filter_map(|l| {
        let l = l.trim().trim_start_matches('|');
        l.strip_prefix("Depends:")?.split_whitespace().next()
    })
}

/// The first `Depends: linux-image-...` of the meta-package.
fn kernel_dependency(out: &str) -> Option<String> {
    depends(out)
        .find(|n| n.starts_with("linux-image-"))
        .map(str::to_string)
}

/// Where `linux-image-<abi>` keeps its files, from its dependencies.
fn layout_of(image_deps: &str, abi: &str) -> Layout {
    let binary = format!("linux-binary-{abi}");
    if depends(image_deps).any(|n| n == binary) {
        Layout::Split
    } else {
        Layout::Boot
    }
}

/// `Candidate:` of `apt-cache policy` output.
fn candidate(out: &str) -> Option<String> {
    out.lines().find_map(|l| {
        let v = l.trim().strip_prefix("Candidate:")?.trim();
        (v != "(none)" && !v.is_empty()).then(|| v.to_string())
    })
}

/// Packages an `apt-get -s` run would remove.
fn removals(sim: &str) -> Vec<String> {
    sim.lines()
        .filter_map(|l| l.strip_prefix("Remv "))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_apt_output() {
        let deps = "linux-image-cloud-amd64\n  Depends: linux-image-6.12.95+deb12-cloud-amd64\n";
        assert_eq!(
            kernel_dependency(deps).as_deref(),
            Some("linux-image-6.12.95+deb12-cloud-amd64")
        );
        let alt = "linux-image-cloud-amd64\n |Depends: linux-image-6.1.0-56-cloud-amd64\n  Depends: linux-image-6.1.0-55-cloud-amd64\n";
        assert_eq!(
            kernel_dependency(alt).as_deref(),
            Some("linux-image-6.1.0-56-cloud-amd64")
        );
        assert_eq!(kernel_dependency("x\n  Depends: initramfs-tools\n"), None);
        // 7.x: the meta-package depends on linux-base-cloud-amd64 first.
        let split_meta = "linux-image-cloud-amd64\n  Depends: linux-base-cloud-amd64\n  Depends: linux-image-7.2.13+deb14-cloud-amd64\n  Depends: linux-modules-cloud-amd64\n";
        assert_eq!(
            kernel_dependency(split_meta).as_deref(),
            Some("linux-image-7.2.13+deb14-cloud-amd64")
        );

        let policy = "linux-image-6.1.0-56-cloud-amd64:\n  Installed: (none)\n  Candidate: 6.1.192-2\n  Version table:\n";
        assert_eq!(candidate(policy).as_deref(), Some("6.1.192-2"));
        assert_eq!(
            candidate("x:\n  Installed: (none)\n  Candidate: (none)\n"),
            None
        );

        let sim = "Remv qemu-utils [1:10.0.2+ds-2+deb13u1~bpo12+1]\nInst seabios (1.16.2-1 Debian:12 [all])\n";
        assert_eq!(removals(sim), vec!["qemu-utils".to_string()]);
        assert!(removals("Inst a (1 x)\nConf a (1 x)\n").is_empty());
    }

    #[test]
    fn kernel_layouts() {
        // `apt-cache depends` of sid's image: the generic linux-base comes
        // first (PreDepends), the per-ABI parts later.
        let split = "linux-image-7.2.13+deb14-cloud-amd64
  PreDepends: linux-base
 |Depends: dracut
  Depends: linux-base-7.2.13+deb14-cloud-amd64
  Depends: linux-binary-7.2.13+deb14-cloud-amd64
  Depends: linux-modules-7.2.13+deb14-cloud-amd64
";
        let abi = "7.2.13+deb14-cloud-amd64";
        assert_eq!(layout_of(split, abi), Layout::Split);
        let k = KernelPackage {
            name: format!("linux-image-{abi}"),
            version: "7.2.13-1".into(),
            abi: abi.into(),
            layout: Layout::Split,
        };
        assert_eq!(
            k.parts(),
            vec![
                "linux-binary-7.2.13+deb14-cloud-amd64".to_string(),
                "linux-base-7.2.13+deb14-cloud-amd64".to_string()
            ]
        );
        assert_eq!(
            k.files(),
            (
                PathBuf::from("usr/lib/modules/7.2.13+deb14-cloud-amd64/vmlinuz"),
                PathBuf::from("usr/lib/modules/7.2.13+deb14-cloud-amd64/config")
            )
        );
        assert_eq!(k.series(), "7.2");

        let boot = "linux-image-6.1.0-57-cloud-amd64
  PreDepends: kmod
  PreDepends: linux-base
  Depends: initramfs-tools
";
        let abi = "6.1.0-57-cloud-amd64";
        assert_eq!(layout_of(boot, abi), Layout::Boot);
        // Another ABI's binary package does not count.
        assert_eq!(
            layout_of("x\n  Depends: linux-binary-7.2.12+deb14-cloud-amd64\n", abi),
            Layout::Boot
        );
        let k = KernelPackage {
            name: format!("linux-image-{abi}"),
            version: "6.1.192-3".into(),
            abi: abi.into(),
            layout: Layout::Boot,
        };
        assert_eq!(
            k.parts(),
            vec!["linux-image-6.1.0-57-cloud-amd64".to_string()]
        );
        assert_eq!(
            k.files().0,
            PathBuf::from("boot/vmlinuz-6.1.0-57-cloud-amd64")
        );
        assert_eq!(k.series(), "6.1");
        let bpo = KernelPackage {
            version: "7.3.4-1~bpo13+1".into(),
            ..k.clone()
        };
        assert_eq!(bpo.series(), "7.3");
    }

    #[test]
    fn guests_by_series_or_suite() {
        assert_eq!(guest_named("5.10").unwrap().suite, "bullseye-security");
        assert_eq!(guest_named("sid").unwrap().series, "7.2");
        assert!(guest_named("stable").is_none());
        // Every guest is named by both, and no two share a name.
        for g in GUESTS {
            assert_eq!(guest_named(g.series), Some(g));
            assert_eq!(guest_named(g.suite), Some(g));
            assert!(g.sources.iter().any(|(_, s)| *s == g.suite));
        }
    }

    #[test]
    fn parses_os_release_and_sources() {
        let os = "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\nVERSION_CODENAME=bookworm\n";
        assert_eq!(
            os_release_value(os, "VERSION_CODENAME").as_deref(),
            Some("bookworm")
        );
        assert_eq!(os_release_value(os, "ID").as_deref(), Some("debian"));
        assert_eq!(os_release_value(os, "VERSION"), None);

        let deb822 =
            "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm bookworm-updates\n";
        assert!(!sources_name_suite(deb822, "bookworm-backports"));
        assert!(sources_name_suite(
            &deb822.replace("updates", "updates bookworm-backports"),
            "bookworm-backports"
        ));
        assert!(sources_name_suite(
            "deb http://deb.debian.org/debian bookworm-backports main\n",
            "bookworm-backports"
        ));
        assert!(!sources_name_suite(
            "# deb http://deb.debian.org/debian bookworm-backports main\n",
            "bookworm-backports"
        ));
    }
}
