//! ggml's RPC backend (llama.cpp's `GGML_RPC`): a model's layers on other machines.
//!
//! `endorm rpc-worker` runs ggml's own RPC server on a machine's devices ([`run_rpc_server`]); a model
//! with `rpc` endpoints registers each worker with ggml once per process ([`devices`]), and
//! llama.cpp then places layers on the workers' devices as it would on GPUs, in proportion to the
//! memory each reports free. The protocol is ggml's: no authentication and no encryption
//! (docs/SCALE.md), so workers listen on loopback unless told otherwise.
//!
//! Neither llama-cpp-2 nor llama-cpp-sys-2's bindings declare the RPC functions (their header is
//! not in the bindings' wrapper). They are reached the way llama.cpp's own `--rpc` reaches them,
//! through the ggml backend registry's proc addresses: a build without GGML_RPC still links and
//! says so at run time instead.

use std::ffi::{c_char, CString};
use std::net::{SocketAddrV4, TcpListener, TcpStream, ToSocketAddrs};
use std::path::Path;
use std::str::FromStr;
use std::sync::{Mutex, PoisonError, RwLock, RwLockReadGuard};
use std::time::Duration;

use llama_cpp_sys_2 as sys;
use serde::{Deserialize, Serialize};

use super::{backend, EngineError};

/// How long a worker may take to accept the TCP connection that checks it is there.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Devices one model may use: llama-cpp-2 keeps 16 slots and llama.cpp reads them up to a null
/// one, so the 16th must stay empty.
const MAX_DEVICES: usize = 15;

/// ggml's `ggml_backend_rpc_add_server` (ggml-rpc.h of the vendored llama.cpp).
type AddServer = unsafe extern "C" fn(endpoint: *const c_char) -> sys::ggml_backend_reg_t;

/// ggml's `ggml_backend_rpc_start_server` (ggml-rpc.h of the vendored llama.cpp).
type StartServer = unsafe extern "C" fn(
    endpoint: *const c_char,
    cache_dir: *const c_char,
    n_threads: usize,
    n_devices: usize,
    devices: *mut sys::ggml_backend_dev_t,
);

/// A worker's address as ggml's RPC client takes it: `HOST:PORT`, the host a name or an IPv4
/// address (ggml splits at the first `:`, so IPv6 cannot be written).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RpcEndpoint(String);

impl RpcEndpoint {
    /// The address, `HOST:PORT`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for RpcEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for RpcEndpoint {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let invalid = |why: &str| {
            format!("RPC worker {text:?}: {why} (expected HOST:PORT, e.g. 192.168.1.20:50052)")
        };
        let (host, port) = text.rsplit_once(':').ok_or_else(|| invalid("no port"))?;
        if host.contains(':') || host.starts_with('[') {
            return Err(invalid("ggml's RPC client takes no IPv6 address"));
        }
        let name = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_');
        if host.is_empty() || !host.chars().all(name) {
            return Err(invalid("the host must be a host name or an IPv4 address"));
        }
        let port = port
            .parse::<u16>()
            .ok()
            .filter(|&port| port > 0)
            .ok_or_else(|| invalid("the port must be 1 to 65535"))?;
        Ok(RpcEndpoint(format!("{host}:{port}")))
    }
}

impl TryFrom<String> for RpcEndpoint {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        text.parse()
    }
}

impl From<RpcEndpoint> for String {
    fn from(endpoint: RpcEndpoint) -> String {
        endpoint.0
    }
}

/// The workers registered with ggml in this process and the indices of their devices in ggml's
/// device list: ggml cannot unregister one, and registering one twice would list its devices twice.
static REGISTERED: Mutex<Vec<(RpcEndpoint, Vec<usize>)>> = Mutex::new(Vec::new());

/// ggml's device registry is a plain vector: a worker registered while another thread reads it (a
/// model loading, a context being created) is a data race. Readers hold this shared
/// ([`registry_read`]); registering holds it exclusively.
static REGISTRY: RwLock<()> = RwLock::new(());

/// Held while llama.cpp reads ggml's device registry (loading a model, creating a context).
pub(super) fn registry_read() -> RwLockReadGuard<'static, ()> {
    REGISTRY.read().unwrap_or_else(PoisonError::into_inner)
}

/// The ggml devices a model loads on, as indices for `LlamaModelParams::with_devices`: the
/// devices of `workers` in order (each registered on first use), then the machine's own GPUs.
/// `None` (llama.cpp's default choice) while no worker is registered in this process; once one
/// is, a model without workers is given the local GPUs alone, so that it never lands on another
/// model's workers.
pub(super) fn devices(workers: &[RpcEndpoint]) -> Result<Option<Vec<usize>>, String> {
    let mut registered = REGISTERED.lock().unwrap_or_else(PoisonError::into_inner);
    if workers.is_empty() && registered.is_empty() {
        return Ok(None);
    }
    let mut devices = Vec::new();
    for worker in workers {
        let known = registered.iter().find(|(endpoint, _)| endpoint == worker);
        let indices = match known {
            Some((_, indices)) => indices.clone(),
            None => {
                let indices = register(worker)?;
                registered.push((worker.clone(), indices.clone()));
                indices
            }
        };
        devices.extend(indices);
    }
    devices.extend(local_gpus());
    if devices.len() > MAX_DEVICES {
        return Err(format!(
            "{} devices (the RPC workers' and this machine's GPUs): llama.cpp takes at most \
             {MAX_DEVICES} for one model",
            devices.len()
        ));
    }
    Ok(Some(devices))
}

/// Whether `worker` accepts a TCP connection within `timeout`; the error says why not. The
/// connection is closed at once: a worker serves one client at a time and takes the next from its
/// queue of connections, where this one then ends without a word (ggml's server drops it).
pub(super) fn probe(worker: &RpcEndpoint, timeout: Duration) -> Result<(), String> {
    worker
        .as_str()
        .to_socket_addrs()
        .map_err(|e| e.to_string())
        .and_then(|mut addresses| addresses.next().ok_or_else(|| "no address".to_owned()))
        .and_then(|address| {
            TcpStream::connect_timeout(&address, timeout).map_err(|e| e.to_string())
        })
        .map(drop)
}

/// What a load says of a worker that does not accept connections.
pub(super) fn unreachable_message(worker: &RpcEndpoint, error: &str) -> String {
    format!(
        "the RPC worker {worker} cannot be reached ({error}): is `endorm rpc-worker --listen \
         {worker}` running there?"
    )
}

/// Connects to the worker, registers its devices with ggml, and returns their indices.
fn register(worker: &RpcEndpoint) -> Result<Vec<usize>, String> {
    // ggml aborts the whole process when it cannot connect: a worker that is not there (not
    // started, a wrong port) is caught here first, as an error of this model's load.
    if let Err(error) = probe(worker, CONNECT_TIMEOUT) {
        return Err(unreachable_message(worker, &error));
    }
    let add_server: AddServer = rpc_function(c"ggml_backend_rpc_add_server")?;
    let endpoint = CString::new(worker.as_str()).map_err(|e| e.to_string())?;
    // SAFETY: `add_server` is ggml's `ggml_backend_rpc_add_server` (the type above is its
    // declaration in ggml-rpc.h); `endpoint` is a NUL-terminated string that outlives the call
    // (ggml copies it). It connects to the worker and makes a registry entry for it without
    // registering it anywhere yet; null when the worker has no devices.
    let reg = unsafe { add_server(endpoint.as_ptr()) };
    if reg.is_null() {
        return Err(format!("the RPC worker {worker} offers no devices"));
    }
    let _writing = REGISTRY.write().unwrap_or_else(PoisonError::into_inner);
    // SAFETY: `reg` is the live registry entry ggml just made for this worker (ggml never frees
    // it); the write lock keeps every other reader of the registry out while it grows, and
    // `REGISTERED` (locked by the caller) makes this the worker's only registration.
    let devices: Vec<sys::ggml_backend_dev_t> = unsafe {
        sys::ggml_backend_register(reg);
        (0..sys::ggml_backend_reg_dev_count(reg))
            .map(|i| sys::ggml_backend_reg_dev_get(reg, i))
            .collect()
    };
    let indices: Vec<usize> = all_devices()
        .enumerate()
        .filter(|(_, device)| devices.contains(device))
        .map(|(index, _)| index)
        .collect();
    if indices.len() != devices.len() {
        return Err(format!(
            "the devices of the RPC worker {worker} are not in ggml's device list after \
             registering it"
        ));
    }
    Ok(indices)
}

/// The ggml devices of the registered workers: each device's name (`RPC0`, `RPC1`, ..., what
/// llama.cpp's log calls it) and its worker.
pub(super) fn registered_devices() -> Vec<(String, RpcEndpoint)> {
    let registered = REGISTERED.lock().unwrap_or_else(PoisonError::into_inner);
    let all: Vec<_> = all_devices().collect();
    registered
        .iter()
        .flat_map(|(worker, indices)| indices.iter().map(move |&i| (worker, i)))
        .filter_map(|(worker, i)| {
            let device = *all.get(i)?;
            // SAFETY: a device from ggml's registry; its name is a string it owns for ever.
            let name = unsafe { std::ffi::CStr::from_ptr(sys::ggml_backend_dev_name(device)) };
            Some((name.to_string_lossy().into_owned(), worker.clone()))
        })
        .collect()
}

/// Asks every registered worker for its memory: one round trip on each worker's connection. On a
/// worker that is gone ggml aborts the process, which is how a model's host process (`host.rs`)
/// learns it between requests rather than in the middle of the next one.
pub(super) fn ping_workers() {
    let registered = REGISTERED.lock().unwrap_or_else(PoisonError::into_inner);
    let all: Vec<_> = all_devices().collect();
    for &i in registered.iter().flat_map(|(_, indices)| indices) {
        if let Some(&device) = all.get(i) {
            let (mut free, mut total) = (0, 0);
            // SAFETY: a device from ggml's registry; ggml writes the two sizes.
            unsafe { sys::ggml_backend_dev_memory(device, &mut free, &mut total) };
        }
    }
}

/// The exit status of a process in which ggml aborted.
pub const GGML_ABORTED: i32 = 70;

/// Makes a ggml abort (a lost RPC worker: "Remote RPC server crashed") end this process at once
/// with [`GGML_ABORTED`] and one line on standard error, instead of a core dump and a debugger's
/// backtrace: for processes whose parent expects them to die that way (a model's host process)
/// and for the offline commands, whose user reads the line.
pub fn quiet_aborts() {
    extern "C" fn abort_line(message: *const c_char) {
        if !message.is_null() {
            // SAFETY: ggml passes a NUL-terminated message that lives during the call.
            let text = unsafe { std::ffi::CStr::from_ptr(message) }.to_string_lossy();
            let line = format!(
                "error: ggml aborted: {} (an RPC worker stopped answering?)\n",
                text.trim().replace('\n', " ")
            );
            // SAFETY: writing a buffer we own to the standard error descriptor.
            unsafe { libc::write(2, line.as_ptr().cast(), line.len()) };
        }
        // SAFETY: ends the process without running anything else of it (another thread may hold
        // any lock), as the abort that follows would.
        unsafe { libc::_exit(GGML_ABORTED) }
    }
    // SAFETY: installs a function that never returns and touches no shared state.
    unsafe { sys::ggml_set_abort_callback(Some(abort_line)) };
}

/// ggml's devices, in the order of its device list (the indices llama-cpp-2 takes).
fn all_devices() -> impl Iterator<Item = sys::ggml_backend_dev_t> {
    // SAFETY: the count and each device are read from ggml's registry; devices are never freed,
    // and an index below the count is valid (the registry only grows).
    let count = unsafe { sys::ggml_backend_dev_count() };
    (0..count).map(|i| unsafe { sys::ggml_backend_dev_get(i) })
}

/// Whether `device` is one of a registered RPC worker's.
fn is_rpc(device: sys::ggml_backend_dev_t) -> bool {
    // SAFETY: `device` comes from ggml's registry; its backend's name is a static string.
    let name = unsafe {
        std::ffi::CStr::from_ptr(sys::ggml_backend_reg_name(
            sys::ggml_backend_dev_backend_reg(device),
        ))
    };
    name.to_bytes() == b"RPC"
}

/// This machine's GPUs as llama.cpp picks them by default: the discrete ones, else the integrated
/// ones.
fn local_gpus() -> Vec<usize> {
    let of_type = |kind: sys::ggml_backend_dev_type| -> Vec<usize> {
        all_devices()
            .enumerate()
            // SAFETY: a device from ggml's registry.
            .filter(|&(_, device)| unsafe { sys::ggml_backend_dev_type(device) } == kind)
            .filter(|&(_, device)| !is_rpc(device))
            .map(|(index, _)| index)
            .collect()
    };
    let gpus = of_type(sys::GGML_BACKEND_DEVICE_TYPE_GPU);
    if gpus.is_empty() {
        of_type(sys::GGML_BACKEND_DEVICE_TYPE_IGPU)
    } else {
        gpus
    }
}

/// A function of ggml's RPC backend, by name, from the backend registry.
fn rpc_function<F: Copy>(name: &std::ffi::CStr) -> Result<F, String> {
    // A cpu-dispatch build registers the RPC backend (libggml-rpc.so) with its CPU variant, when
    // the process's backend starts: before that it is not there to be found.
    backend().map_err(|e| e.to_string())?;
    // SAFETY: looking a backend up by a NUL-terminated name is read-only.
    let reg = unsafe { sys::ggml_backend_reg_by_name(c"RPC".as_ptr()) };
    if reg.is_null() {
        return Err(
            "this endorm was built without ggml's RPC backend (build it with \
             GGML_RPC=ON: docs/SCALE.md)"
                .into(),
        );
    }
    // SAFETY: `reg` is ggml's RPC backend and `name` is NUL-terminated.
    let address = unsafe { sys::ggml_backend_reg_get_proc_address(reg, name.as_ptr()) };
    if address.is_null() || size_of::<F>() != size_of_val(&address) {
        return Err(format!("ggml's RPC backend has no {name:?}"));
    }
    // SAFETY: the RPC backend returns the address of the function of that name, whose C type the
    // caller names as `F` (a function pointer of the same size, checked above).
    Ok(unsafe { std::mem::transmute_copy::<*mut std::ffi::c_void, F>(&address) })
}

/// How `endorm rpc-worker` serves.
#[derive(Debug, Clone)]
pub struct RpcServerOptions<'a> {
    /// The address to listen on (ggml's server takes an IPv4 address).
    pub listen: SocketAddrV4,
    /// CPU threads of the CPU backend.
    pub threads: usize,
    /// Where ggml keeps the large tensors clients sent, so that a client that loads the same
    /// model again sends their hashes instead.
    pub cache_dir: Option<&'a Path>,
}

/// Runs ggml's RPC server on this machine's GPUs (llama.cpp's rule: all of them), else its CPU.
/// Serves one client at a time, until the process is stopped; returns only if it cannot serve.
pub fn run_rpc_server(
    options: &RpcServerOptions<'_>,
) -> Result<std::convert::Infallible, EngineError> {
    backend()?;
    // ggml says only "Failed to create server socket" on stdout: a port in use or an address
    // not of this machine gets its reason here first.
    TcpListener::bind(options.listen)
        .map_err(|e| EngineError::Backend(format!("cannot listen on {}: {e}", options.listen)))?;
    let cache_dir = match options.cache_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(|e| {
                EngineError::Backend(format!("cannot create the cache {}: {e}", dir.display()))
            })?;
            let bytes = std::os::unix::ffi::OsStrExt::as_bytes(dir.as_os_str()).to_vec();
            Some(CString::new(bytes).map_err(|e| EngineError::Backend(e.to_string()))?)
        }
        None => None,
    };
    let start_server: StartServer =
        rpc_function(c"ggml_backend_rpc_start_server").map_err(EngineError::Backend)?;
    let mut devices: Vec<sys::ggml_backend_dev_t> = {
        let gpus = local_gpus();
        let all: Vec<_> = all_devices().collect();
        gpus.iter().map(|&i| all[i]).collect()
    };
    if devices.is_empty() {
        // SAFETY: a read of ggml's registry; null when there is no CPU backend.
        let cpu = unsafe { sys::ggml_backend_dev_by_type(sys::GGML_BACKEND_DEVICE_TYPE_CPU) };
        if cpu.is_null() {
            return Err(EngineError::Backend("ggml has no CPU backend".into()));
        }
        devices.push(cpu);
    }
    let endpoint = CString::new(options.listen.to_string())
        .map_err(|e| EngineError::Backend(e.to_string()))?;
    let cache = cache_dir
        .as_ref()
        .map_or(std::ptr::null(), |dir| dir.as_ptr());
    // SAFETY: `start_server` is ggml's `ggml_backend_rpc_start_server` (the type above is its
    // declaration in ggml-rpc.h). The endpoint and the cache directory are NUL-terminated strings
    // (or null: no cache) and `devices` holds `devices.len()` devices from ggml's registry; all
    // of them outlive the call, which returns only when the server cannot run.
    unsafe {
        start_server(
            endpoint.as_ptr(),
            cache,
            options.threads.max(1),
            devices.len(),
            devices.as_mut_ptr(),
        )
    };
    Err(EngineError::Backend(format!(
        "ggml's RPC server on {} stopped (its reason is on the lines above)",
        options.listen
    )))
}

#[cfg(test)]
mod tests {
    use super::RpcEndpoint;

    #[test]
    fn endpoints_are_host_and_port_as_ggml_reads_them() {
        for (text, endpoint) in [
            ("127.0.0.1:50052", "127.0.0.1:50052"),
            ("gpu-box.lan:7", "gpu-box.lan:7"),
            ("10.0.0.2:050052", "10.0.0.2:50052"),
        ] {
            let parsed: RpcEndpoint = text.parse().unwrap();
            assert_eq!(parsed.as_str(), endpoint);
        }
        for (text, why) in [
            ("127.0.0.1", "no port"),
            (":50052", "host"),
            ("[::1]:50052", "IPv6"),
            ("::1:50052", "IPv6"),
            ("a b:1", "host"),
            ("host:0", "port"),
            ("host:65536", "port"),
            ("host:port", "port"),
        ] {
            let error = text.parse::<RpcEndpoint>().unwrap_err();
            assert!(error.contains(why), "{text}: {error}");
        }
    }

    #[test]
    fn endpoints_read_from_and_write_to_toml_strings() {
        #[derive(serde::Deserialize, serde::Serialize)]
        struct Doc {
            rpc: Vec<RpcEndpoint>,
        }
        let doc: Doc = toml::from_str("rpc = [\"a:1\", \"10.0.0.2:50052\"]").unwrap();
        assert_eq!(doc.rpc[1].as_str(), "10.0.0.2:50052");
        assert_eq!(
            toml::to_string(&doc).unwrap().trim(),
            "rpc = [\"a:1\", \"10.0.0.2:50052\"]"
        );
        let error = toml::from_str::<Doc>("rpc = [\"a\"]").err().unwrap();
        assert!(error.to_string().contains("no port"), "{error}");
    }
}
