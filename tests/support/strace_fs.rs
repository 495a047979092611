//! A model of what a power cut leaves on disk, rebuilt from an `strace` record of a process.
//!
//! The record (`strace -f -qq -xx -s 16777216`, the syscalls in [`TRACED`]) holds every write,
//! with its bytes, every fsync and every change of a directory's names. Replaying it in order
//! gives, at any moment, each file's content as written and as last synced, and each
//! directory's names as they are and as of its last fsync. A power cut at that moment leaves
//! every file cut back to its synced content; which names survive depends on when the file
//! system commits its metadata, so both extremes are built: the names of the last directory
//! fsync, and every name as it is.
//!
//! The model is strict where a file system may be kind: an fsync covers only the writes that
//! returned before it was called, a write in flight counts only when it returns, and an fsync
//! counts only when it returns. Anything the model cannot follow inside the data directory
//! (a subdirectory, a hard link, a shared writable mapping, io_uring, `sync`) fails the replay
//! loudly instead of being ignored.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// The syscalls to trace: those that can change a file's bytes, a directory's names, or what
/// an fd refers to; `mmap` to refuse shared writable mappings.
pub const TRACED: &str = "openat,open,creat,write,pwrite64,writev,pwritev,pwritev2,fsync,\
fdatasync,sync,syncfs,ftruncate,truncate,fallocate,rename,renameat,renameat2,unlink,unlinkat,\
close,close_range,dup,dup2,dup3,fcntl,lseek,mkdir,mkdirat,rmdir,link,linkat,symlink,symlinkat,\
copy_file_range,sendfile,io_uring_setup,mmap";

/// One syscall: its name, its argument text (entry and resumed parts joined) and its result
/// (`None` when the process died inside it).
#[derive(Debug, Clone)]
pub struct Call {
    pub name: String,
    pub args: String,
    pub ret: Option<i64>,
}

/// A point in the record: a syscall entered or returned; or a new process (the previous one
/// died; its fds are gone, the file system stays).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Enter(usize),
    Exit(usize),
    NewProcess,
}

/// A parsed record.
#[derive(Debug, Default)]
pub struct Record {
    pub calls: Vec<Call>,
    pub events: Vec<Event>,
}

impl Record {
    /// Appends one process's `strace -f -qq -xx` output.
    pub fn push_process(&mut self, text: &str) {
        if !self.events.is_empty() {
            self.events.push(Event::NewProcess);
        }
        let mut pending: HashMap<u64, (usize, String)> = HashMap::new();
        for line in text.lines() {
            let Some((pid, rest)) = line.split_once(' ') else {
                continue;
            };
            let Ok(pid) = pid.parse::<u64>() else {
                panic!("unexpected strace line: {line}");
            };
            let rest = rest.trim_start();
            if rest.starts_with("+++") || rest.starts_with("---") {
                continue;
            }
            if let Some(resumed) = rest.strip_prefix("<... ") {
                let (_, tail) = resumed
                    .split_once(" resumed>")
                    .unwrap_or_else(|| panic!("unexpected strace line: {line}"));
                let (id, head) = pending
                    .remove(&pid)
                    .unwrap_or_else(|| panic!("resumed call without its start: {line}"));
                let (args, ret) = split_result(&format!("{head}{tail}"));
                self.calls[id].args = args;
                self.calls[id].ret = ret;
                self.events.push(Event::Exit(id));
                continue;
            }
            let (name, after) = rest
                .split_once('(')
                .unwrap_or_else(|| panic!("unexpected strace line: {line}"));
            let id = self.calls.len();
            if let Some(head) = after.strip_suffix(" <unfinished ...>") {
                self.calls.push(Call {
                    name: name.to_string(),
                    args: head.to_string(),
                    ret: None,
                });
                self.events.push(Event::Enter(id));
                pending.insert(pid, (id, head.to_string()));
            } else {
                let (args, ret) = split_result(after);
                self.calls.push(Call {
                    name: name.to_string(),
                    args,
                    ret,
                });
                self.events.push(Event::Enter(id));
                self.events.push(Event::Exit(id));
            }
        }
        // Calls still pending died with the process: they never returned.
    }
}

/// `ARGS) = RET ...` into the argument text and the result.
fn split_result(s: &str) -> (String, Option<i64>) {
    // strace pads the result to a column: `close(3)       = 0`.
    let Some((head, result)) = s
        .rsplit_once(" = ")
        .filter(|(h, _)| h.trim_end().ends_with(')'))
    else {
        // A call cut by the kill: no result.
        let args = s.rsplit_once(')').map_or(s, |(a, _)| a);
        return (args.to_string(), None);
    };
    let head = head.trim_end();
    let args = head[..head.len() - 1].to_string();
    let ret = result.split_whitespace().next().unwrap_or("?");
    let ret = if let Some(hex) = ret.strip_prefix("0x") {
        i64::from_str_radix(hex, 16).ok()
    } else {
        ret.parse::<i64>().ok()
    };
    (args, ret)
}

/// Splits an argument list at its top-level commas.
pub fn split_args(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let (mut depth, mut quoted, mut cur) = (0i32, false, String::new());
    for c in s.chars() {
        match c {
            '"' => quoted = !quoted,
            '[' | '{' if !quoted => depth += 1,
            ']' | '}' if !quoted => depth -= 1,
            ',' if !quoted && depth == 0 => {
                out.push(cur.trim().to_string());
                cur.clear();
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    if !cur.trim().is_empty() {
        out.push(cur.trim().to_string());
    }
    out
}

/// The bytes of a `-xx` string argument (`"\x2f\x74"`); a string strace cut short (`"..."...`)
/// fails: the record must hold every byte written.
pub fn bytes(arg: &str) -> Vec<u8> {
    let inner = arg
        .strip_prefix('"')
        .and_then(|a| a.strip_suffix('"'))
        .unwrap_or_else(|| panic!("not a whole string argument (raise -s?): {arg:.80}"));
    let b = inner.as_bytes();
    assert!(b.len().is_multiple_of(4), "not a -xx string: {arg:.80}");
    b.chunks(4)
        .map(|c| {
            assert_eq!(&c[..2], b"\\x", "not a -xx string: {arg:.80}");
            u8::from_str_radix(std::str::from_utf8(&c[2..]).unwrap(), 16).unwrap()
        })
        .collect()
}

fn int(arg: &str) -> i64 {
    if let Some(h) = arg.strip_prefix("0x") {
        return i64::from_str_radix(h, 16).unwrap_or_else(|_| panic!("not a number: {arg}"));
    }
    arg.parse()
        .unwrap_or_else(|_| panic!("not a number: {arg}"))
}

#[derive(Debug, Default, Clone)]
struct Inode {
    data: Vec<u8>,
    synced: Vec<u8>,
}

#[derive(Debug, Clone)]
enum Target {
    File(usize),
    Root,
    Untracked,
}

#[derive(Debug, Clone)]
struct Description {
    target: Target,
    offset: u64,
    append: bool,
}

/// What a power cut at one moment leaves in the data directory: file name to bytes.
pub type DiskState = BTreeMap<String, Vec<u8>>;

/// The replayed file system of one data directory (flat, as RocksDB keeps it) and the lines the
/// process wrote to its stdout.
pub struct Model {
    root: PathBuf,
    inodes: Vec<Inode>,
    live: BTreeMap<String, usize>,
    durable: BTreeMap<String, usize>,
    fds: HashMap<i64, usize>,
    descriptions: Vec<Description>,
    /// Snapshots taken when an fsync was entered, made the synced state when it returns.
    syncing: HashMap<usize, Syncing>,
    stdout: Vec<u8>,
    /// Complete stdout lines, in the order they were written.
    pub lines: Vec<String>,
}

enum Syncing {
    File(usize, Vec<u8>),
    Root(BTreeMap<String, usize>),
}

impl Model {
    /// A model of `root`, an empty directory that exists durably.
    pub fn new(root: &Path) -> Model {
        Model {
            root: root.to_path_buf(),
            inodes: Vec::new(),
            live: BTreeMap::new(),
            durable: BTreeMap::new(),
            fds: HashMap::new(),
            descriptions: Vec::new(),
            syncing: HashMap::new(),
            stdout: Vec::new(),
            lines: Vec::new(),
        }
    }

    /// The disk after a power cut now, with the names of the last directory fsync
    /// (`all_names` false) or with every name as it is (`all_names` true); each file holds its
    /// synced bytes.
    pub fn power_cut(&self, all_names: bool) -> DiskState {
        let names = if all_names { &self.live } else { &self.durable };
        names
            .iter()
            .map(|(n, &i)| (n.clone(), self.inodes[i].synced.clone()))
            .collect()
    }

    /// The directory's names now.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.live.keys().map(String::as_str)
    }

    /// Whether call `id` is an fsync of a data file or of the directory, entered and not yet
    /// returned.
    pub fn syncs(&self, id: usize) -> bool {
        self.syncing.contains_key(&id)
    }

    /// Applies one event of `record`.
    pub fn apply(&mut self, record: &Record, event: Event) {
        match event {
            Event::NewProcess => {
                self.fds.clear();
                self.syncing.clear();
                self.stdout.clear();
            }
            Event::Enter(id) => self.enter(id, &record.calls[id]),
            Event::Exit(id) => self.exit(id, &record.calls[id]),
        }
    }

    /// The name of `path` in the data directory, `None` outside it; a path deeper inside fails.
    fn name_of(&self, dirfd: Option<&str>, path: &str) -> Option<String> {
        let p = Path::new(path);
        let full = if p.is_absolute() {
            p.to_path_buf()
        } else {
            match dirfd {
                Some("AT_FDCWD") | None => return None,
                Some(fd) => match self
                    .fds
                    .get(&int(fd))
                    .map(|&d| &self.descriptions[d].target)
                {
                    Some(Target::Root) => self.root.join(p),
                    _ => return None,
                },
            }
        };
        let rel = full.strip_prefix(&self.root).ok()?;
        let parts: Vec<_> = rel.components().collect();
        match parts.len() {
            0 => Some(String::new()),
            1 => Some(rel.to_string_lossy().into_owned()),
            _ => panic!(
                "unmodelled: a path below the data directory: {}",
                full.display()
            ),
        }
    }

    fn path_arg(&self, dirfd: Option<&str>, arg: &str) -> Option<String> {
        let raw = bytes(arg);
        let path = String::from_utf8(raw).expect("utf-8 path");
        self.name_of(dirfd, &path)
    }

    fn file_fd(&self, fd: i64) -> Option<usize> {
        let d = *self.fds.get(&fd)?;
        match self.descriptions[d].target {
            Target::File(_) => Some(d),
            _ => None,
        }
    }

    fn enter(&mut self, id: usize, call: &Call) {
        let args = split_args(&call.args);
        match call.name.as_str() {
            "fsync" | "fdatasync" => {
                let fd = int(&args[0]);
                let Some(&d) = self.fds.get(&fd) else { return };
                let snap = match self.descriptions[d].target {
                    Target::File(i) => Syncing::File(i, self.inodes[i].data.clone()),
                    Target::Root => Syncing::Root(self.live.clone()),
                    Target::Untracked => return,
                };
                self.syncing.insert(id, snap);
            }
            // A line on stdout counts from the moment its write is entered: the process may
            // die before strace sees the write return, while the reader already has the line.
            // (Everything the line acknowledges was made durable before the write began.)
            "write" if int(&args[0]) == 1 => {
                self.stdout.extend(bytes(&args[1]));
                while let Some(nl) = self.stdout.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = self.stdout.drain(..=nl).collect();
                    self.lines
                        .push(String::from_utf8_lossy(&line[..nl]).into_owned());
                }
            }
            "sync" | "syncfs" => panic!("unmodelled: {}", call.name),
            "io_uring_setup" => panic!("unmodelled: io_uring"),
            _ => {}
        }
    }

    fn exit(&mut self, id: usize, call: &Call) {
        let args = split_args(&call.args);
        let Some(ret) = call.ret else {
            self.syncing.remove(&id);
            return;
        };
        let ok = ret >= 0;
        match call.name.as_str() {
            "open" | "openat" | "creat" if ok => {
                let (dirfd, path, flags) = match call.name.as_str() {
                    "openat" => (Some(args[0].as_str()), &args[1], args[2].as_str()),
                    "open" => (None, &args[0], args[1].as_str()),
                    _ => (None, &args[0], "O_CREAT|O_WRONLY|O_TRUNC"),
                };
                let target = match self.path_arg(dirfd, path) {
                    None => Target::Untracked,
                    Some(n) if n.is_empty() => Target::Root,
                    Some(n) => {
                        let inode = match self.live.get(&n) {
                            Some(&i) => i,
                            None => {
                                assert!(flags.contains("O_CREAT"), "opened a missing {n}");
                                self.inodes.push(Inode::default());
                                self.live.insert(n.clone(), self.inodes.len() - 1);
                                self.inodes.len() - 1
                            }
                        };
                        if flags.contains("O_TRUNC") {
                            self.inodes[inode].data.clear();
                        }
                        Target::File(inode)
                    }
                };
                self.descriptions.push(Description {
                    target,
                    offset: 0,
                    append: flags.contains("O_APPEND"),
                });
                self.fds.insert(ret, self.descriptions.len() - 1);
            }
            "write" | "pwrite64" | "writev" if ok => {
                let fd = int(&args[0]);
                let data = if call.name == "writev" {
                    args[1]
                        .split("iov_base=")
                        .skip(1)
                        .flat_map(|s| bytes(split_args(s)[0].as_str()))
                        .collect()
                } else {
                    let d = bytes(&args[1]);
                    assert_eq!(d.len() as i64, int(&args[2]), "a whole write buffer");
                    d
                };
                let data = &data[..ret as usize];
                if fd == 1 {
                    // Taken when the write was entered.
                    return;
                }
                let Some(d) = self.file_fd(fd) else { return };
                let Target::File(i) = self.descriptions[d].target else {
                    unreachable!()
                };
                let inode = &mut self.inodes[i];
                let at = if call.name == "pwrite64" {
                    int(&args[3]) as usize
                } else if self.descriptions[d].append {
                    inode.data.len()
                } else {
                    self.descriptions[d].offset as usize
                };
                if inode.data.len() < at + data.len() {
                    inode.data.resize(at + data.len(), 0);
                }
                inode.data[at..at + data.len()].copy_from_slice(data);
                if call.name != "pwrite64" {
                    self.descriptions[d].offset = (at + data.len()) as u64;
                }
            }
            "pwritev" | "pwritev2" | "copy_file_range" | "sendfile" => {
                let out = if call.name == "sendfile" || call.name.starts_with("pwritev") {
                    int(&args[0])
                } else {
                    int(&args[2])
                };
                assert!(
                    self.file_fd(out).is_none(),
                    "unmodelled: {} into the data directory",
                    call.name
                );
            }
            "fsync" | "fdatasync" => {
                let Some(snap) = self.syncing.remove(&id) else {
                    return;
                };
                assert!(
                    ok,
                    "{} failed: the record cannot say what is durable",
                    call.name
                );
                match snap {
                    Syncing::File(i, data) => self.inodes[i].synced = data,
                    Syncing::Root(names) => self.durable = names,
                }
            }
            "ftruncate" if ok => {
                if let Some(d) = self.file_fd(int(&args[0])) {
                    let Target::File(i) = self.descriptions[d].target else {
                        unreachable!()
                    };
                    self.inodes[i].data.resize(int(&args[1]) as usize, 0);
                }
            }
            "truncate" if ok => {
                if let Some(n) = self.path_arg(None, &args[0]) {
                    let i = self.live[&n];
                    self.inodes[i].data.resize(int(&args[1]) as usize, 0);
                }
            }
            "fallocate" if ok => {
                if let Some(d) = self.file_fd(int(&args[0])) {
                    let mode = &args[1];
                    assert!(
                        mode == "0" || mode == "FALLOC_FL_KEEP_SIZE",
                        "unmodelled fallocate mode {mode}"
                    );
                    if mode == "0" {
                        let Target::File(i) = self.descriptions[d].target else {
                            unreachable!()
                        };
                        let end = (int(&args[2]) + int(&args[3])) as usize;
                        if self.inodes[i].data.len() < end {
                            self.inodes[i].data.resize(end, 0);
                        }
                    }
                }
            }
            "rename" | "renameat" | "renameat2" if ok => {
                let (from, to) = if call.name == "rename" {
                    (self.path_arg(None, &args[0]), self.path_arg(None, &args[1]))
                } else {
                    (
                        self.path_arg(Some(&args[0]), &args[1]),
                        self.path_arg(Some(&args[2]), &args[3]),
                    )
                };
                match (from, to) {
                    (None, None) => {}
                    (Some(f), Some(t)) if !f.is_empty() && !t.is_empty() => {
                        let i = self.live.remove(&f).expect("renamed a known file");
                        self.live.insert(t, i);
                    }
                    other => panic!("unmodelled rename {other:?}"),
                }
            }
            "unlink" | "unlinkat" if ok => {
                let name = if call.name == "unlink" {
                    self.path_arg(None, &args[0])
                } else {
                    let name = self.path_arg(Some(&args[0]), &args[1]);
                    assert!(
                        !(args[2].contains("AT_REMOVEDIR") && name.is_some()),
                        "unmodelled: a directory removed in the data directory"
                    );
                    name
                };
                if let Some(n) = name {
                    self.live.remove(&n).expect("unlinked a known file");
                }
            }
            "close" if ok => {
                self.fds.remove(&int(&args[0]));
            }
            "close_range" if ok => {
                let (lo, hi) = (int(&args[0]), int(&args[1]).min(1 << 20));
                self.fds.retain(|fd, _| *fd < lo || *fd > hi);
            }
            "dup" | "dup2" | "dup3" if ok => {
                if let Some(&d) = self.fds.get(&int(&args[0])) {
                    self.fds.insert(ret, d);
                } else {
                    self.fds.remove(&ret);
                }
            }
            "fcntl" if ok && args.get(1).is_some_and(|a| a.starts_with("F_DUPFD")) => {
                if let Some(&d) = self.fds.get(&int(&args[0])) {
                    self.fds.insert(ret, d);
                }
            }
            "lseek" if ok => {
                if let Some(d) = self.file_fd(int(&args[0])) {
                    self.descriptions[d].offset = ret as u64;
                }
            }
            "mkdir" | "mkdirat" | "rmdir" | "link" | "linkat" | "symlink" | "symlinkat" if ok => {
                let inside = match call.name.as_str() {
                    "mkdir" | "rmdir" => self.path_arg(None, &args[0]),
                    "mkdirat" => self.path_arg(Some(&args[0]), &args[1]),
                    "link" | "symlink" => self.path_arg(None, &args[1]),
                    "linkat" => self.path_arg(Some(&args[2]), &args[3]),
                    _ => self.path_arg(Some(&args[1]), &args[2]),
                };
                assert!(
                    inside.is_none(),
                    "unmodelled: {} in the data directory",
                    call.name
                );
            }
            "mmap" if ok => {
                let (prot, flags, fd) = (&args[2], &args[3], int(&args[4]));
                assert!(
                    !(prot.contains("PROT_WRITE")
                        && flags.contains("MAP_SHARED")
                        && self.file_fd(fd).is_some()),
                    "unmodelled: a shared writable mapping of a data file"
                );
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> String {
        let body: String = s.bytes().map(|b| format!("\\x{b:02x}")).collect();
        format!("\"{body}\"")
    }

    // An fsync covers the writes that returned before it was called, not one in flight; a
    // power cut keeps synced bytes only, and names only once their directory is synced.
    #[test]
    fn a_power_cut_keeps_synced_bytes_and_synced_names() {
        let root = Path::new("/d");
        let f = hex("/d/f");
        let text = format!(
            "1 openat(AT_FDCWD, {d}, O_RDONLY|O_CLOEXEC) = 3\n\
             1 openat(AT_FDCWD, {f}, O_WRONLY|O_CREAT|O_TRUNC, 0644) = 4\n\
             1 write(4, {a}, 3) = 3\n\
             1 fdatasync(4 <unfinished ...>\n\
             2 write(4, {b}, 3 <unfinished ...>\n\
             1 <... fdatasync resumed>)          = 0\n\
             2 <... write resumed>) = 3\n\
             2 write(1, {l}, 5) = 5\n",
            d = hex("/d"),
            a = hex("abc"),
            b = hex("def"),
            l = hex("ok 1\n"),
        );
        let mut rec = Record::default();
        rec.push_process(&text);
        let mut m = Model::new(root);
        for &e in &rec.events {
            m.apply(&rec, e);
        }
        assert_eq!(m.lines, vec!["ok 1".to_string()]);
        // The directory was never synced: the file's name may be gone.
        assert!(m.power_cut(false).is_empty());
        assert_eq!(m.power_cut(true)["f"], b"abc".to_vec());
        rec.push_process(&format!(
            "3 openat(AT_FDCWD, {d}, O_RDONLY) = 3\n3 fsync(3) = 0\n",
            d = hex("/d")
        ));
        for &e in &rec.events[rec.events.len() - 3..] {
            m.apply(&rec, e);
        }
        assert_eq!(m.power_cut(false)["f"], b"abc".to_vec());
    }

    #[test]
    fn arguments_split_at_top_level_commas() {
        assert_eq!(
            split_args(r#"5, [{iov_base="\x61", iov_len=1}, {iov_base="\x62", iov_len=1}], 2"#),
            vec![
                "5".to_string(),
                r#"[{iov_base="\x61", iov_len=1}, {iov_base="\x62", iov_len=1}]"#.to_string(),
                "2".to_string()
            ]
        );
        assert_eq!(split_result("3, 4) = -1 ENOENT (x)").1, Some(-1));
        assert_eq!(
            split_result("3)                 = 0"),
            ("3".to_string(), Some(0))
        );
    }
}
