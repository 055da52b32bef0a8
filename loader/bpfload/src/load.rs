//! Turns a parsed and linked object into kernel objects: creates the maps a
//! selection of programs uses (sizes overridable), fills and freezes global
//! data, writes the fds into the instructions, loads BTF and programs.

use crate::attach::{self, RawTracepointLink, TracepointLink};
use crate::btf;
use crate::linker::{self, LinkedProgram};
use crate::maps::Map;
use crate::obj::{self, AttachPoint, MapSpec, ObjectSpec};
use crate::sys::{self, MapCreateAttr};
use crate::{Error, Result, names};
use std::collections::{BTreeSet, HashMap};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

/// Load-time changes to a map of the object.
#[derive(Debug, Clone, Copy, Default)]
pub struct MapOverride<'a> {
    pub max_entries: Option<u32>,
    /// Template for map-in-map outers.
    pub inner_map: Option<BorrowedFd<'a>>,
}

#[derive(Debug, Default)]
pub struct LoadOptions<'a> {
    /// Programs to load, by name; empty loads every program of the object.
    pub programs: Vec<String>,
    /// By map name (as [`ObjectSpec::map_index`] resolves it).
    pub maps: HashMap<String, MapOverride<'a>>,
    /// Maps to create even if no selected program uses them (user space
    /// reads them whichever programs a kernel accepts).
    pub also_maps: Vec<String>,
}

/// A loaded program and where it wants to be attached.
#[derive(Debug)]
pub struct Program {
    pub name: String,
    pub attach: AttachPoint,
    pub fd: OwnedFd,
}

impl Program {
    /// Attaches the program where its section says.
    pub fn attach(&self) -> Result<Link> {
        match &self.attach {
            AttachPoint::Tracepoint { category, name } => {
                attach::attach_tracepoint(self.fd.as_fd(), category, name).map(Link::Tracepoint)
            }
            AttachPoint::RawTracepoint { name } => {
                attach::attach_raw_tracepoint(self.fd.as_fd(), name).map(Link::RawTracepoint)
            }
        }
        .map_err(|e| e.context(format!("attach `{}`", self.name)))
    }
}

/// An attachment; dropping it detaches the program.
#[derive(Debug)]
pub enum Link {
    Tracepoint(TracepointLink),
    RawTracepoint(RawTracepointLink),
}

/// Kernel objects of one object file. Dropping it closes every fd, which
/// frees the maps and programs once nothing else holds them.
#[derive(Debug)]
pub struct Loaded {
    maps: Vec<(String, Map)>,
    pub programs: Vec<Program>,
}

impl Loaded {
    /// The map called `name`, found as [`ObjectSpec::map_index`] finds it.
    pub fn map(&self, name: &str) -> Result<&Map> {
        names::find(self.maps.iter().map(|(n, _)| n.as_str()), name)
            .map(|i| &self.maps[i].1)
            .ok_or_else(|| Error::new(format!("the object has no (loaded) map `{name}`")))
    }

    /// Attaches every loaded program; the links detach when dropped.
    pub fn attach_all(&self) -> Result<Vec<Link>> {
        self.programs.iter().map(Program::attach).collect()
    }
}

fn prog_type(a: &AttachPoint) -> u32 {
    match a {
        AttachPoint::Tracepoint { .. } => sys::BPF_PROG_TYPE_TRACEPOINT,
        AttachPoint::RawTracepoint { .. } => sys::BPF_PROG_TYPE_RAW_TRACEPOINT,
    }
}

/// Parses, links and loads `bytes`.
pub fn load(bytes: &[u8], opts: &LoadOptions<'_>) -> Result<Loaded> {
    let spec = obj::parse(bytes)?;
    let mut progs = select(&spec, &opts.programs)?;
    for name in opts.maps.keys() {
        if spec.map_index(name).is_none() {
            crate::bail!("map override for `{name}`: the object has no such map");
        }
    }

    // Only the maps the selected programs use, and those asked for.
    let mut used: BTreeSet<usize> = progs
        .iter()
        .flat_map(|p| p.map_refs.iter().map(|r| r.map))
        .collect();
    for name in &opts.also_maps {
        let i = spec
            .map_index(name)
            .ok_or_else(|| Error::new(format!("the object has no map `{name}`")))?;
        used.insert(i);
    }
    let mut fds = vec![-1; spec.maps.len()];
    let mut maps = Vec::with_capacity(used.len());
    for &i in &used {
        let m = &spec.maps[i];
        let ov = opts
            .maps
            .iter()
            .find(|(k, _)| spec.map_index(k) == Some(i))
            .map(|(_, v)| *v)
            .unwrap_or_default();
        let map = create_map(m, ov)?;
        fds[i] = map.as_fd().as_raw_fd();
        maps.push((m.name.clone(), map));
    }

    let mut programs = Vec::with_capacity(progs.len());
    for p in &mut progs {
        p.resolve_maps(&fds)?;
        programs.push(load_program(p, &spec.license)?);
    }
    Ok(Loaded { maps, programs })
}

/// Creates the map `m` describes (with `ov` applied), fills it with its
/// initial bytes and freezes it if it is read-only data.
pub fn create_map(m: &MapSpec, ov: MapOverride<'_>) -> Result<Map> {
    let map = Map::create(&MapCreateAttr {
        map_type: m.map_type,
        key_size: m.key_size,
        value_size: m.value_size,
        max_entries: ov.max_entries.unwrap_or(m.max_entries),
        map_flags: m.flags,
        name: &m.kernel_name(),
        inner_map_fd: ov.inner_map,
    })
    .map_err(|e| e.context(format!("map `{}`", names::demangled_tail(&m.name))))?;
    if let Some(init) = &m.initial {
        map.update(&0u32.to_ne_bytes(), init, sys::BPF_ANY)
            .map_err(|e| e.context(format!("fill `{}`", m.name)))?;
    }
    if m.frozen() {
        map.freeze()?;
    }
    Ok(map)
}

fn select(spec: &ObjectSpec, names: &[String]) -> Result<Vec<LinkedProgram>> {
    if names.is_empty() {
        return linker::link(spec);
    }
    names
        .iter()
        .map(|n| {
            let p = spec.program(n).ok_or_else(|| {
                Error::new(format!(
                    "the object has no program `{n}` (it has: {})",
                    spec.program_names().join(", ")
                ))
            })?;
            linker::link_program(spec, p)
        })
        .collect()
}

/// Loads one linked program (map fds already resolved) with loader-built BTF.
pub fn load_program(p: &LinkedProgram, license: &str) -> Result<Program> {
    let b = btf::program_btf(p);
    let btf_fd = sys::btf_load(&b.blob).map_err(|e| e.context(format!("BTF for `{}`", p.name)))?;
    let fd = sys::prog_load(&sys::ProgLoadAttr {
        prog_type: prog_type(&p.attach),
        insns: &p.insns,
        license,
        name: &p.name,
        prog_btf_fd: Some(btf_fd.as_raw_fd()),
        func_info: &b.func_info,
        func_info_rec_size: b.func_info_rec_size,
        func_info_cnt: b.func_info_cnt(),
    })
    .map_err(|e| refused_hint(e, p))?;
    Ok(Program {
        name: p.name.clone(),
        attach: p.attach.clone(),
        fd,
    })
}

/// A refused program that uses features older kernels lack says so: their
/// verifiers give misleading reasons (5.10 counts no callback as a
/// subprogram, so it complains that func_info does not match).
fn refused_hint(e: Error, p: &LinkedProgram) -> Error {
    let needs = crate::insn::Needs::of(&p.insns).describe();
    if needs.is_empty() || e.errno != Some(libc::EINVAL) {
        return e;
    }
    let msg = format!(
        "{} (the program uses {}: a kernel without them refuses it)",
        e.msg,
        needs.join(", ")
    );
    Error { msg, ..e }
}
