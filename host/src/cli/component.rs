//! `plughost component bindgen-c|new`: what a C or Go plug-in's build needs besides
//! its compiler, without installing `wit-bindgen-cli` or `wasm-tools`.
//!
//! - `bindgen-c --out-dir DIR`: C bindings for the plug-in world (what `wit-bindgen c`
//!   writes: `plugin.h`, `plugin.c` and `plugin_component_type.o`).
//! - `new CORE.wasm -o OUT.wasm`: a component from a core module built for
//!   `wasm32-wasip1` (clang's `wasm32-wasi`, Go's `wasip1`), with the WASI preview1
//!   reactor adapter when the module imports WASI. `--embed-wit` first embeds the
//!   world's type information (for a toolchain that cannot link
//!   `plugin_component_type.o`, such as Go); `--realloc-via-memory-grow` lets the
//!   adapter allocate without the module's `cabi_realloc` (Go's allocates through its
//!   garbage collector, which must not run then).

use std::path::PathBuf;
use std::process::ExitCode;

use wit_bindgen_core::wit_parser::{Resolve, WorldId};

use super::{CliError, Global, read_file};

/// The world every plug-in implements, as this plughost was built with it.
const WORLD_WIT: &str = include_str!("../../../wit/plugin.wit");

#[derive(clap::Subcommand)]
pub(crate) enum Component {
    /// Write C bindings for the plug-in world (as `wit-bindgen c` does).
    BindgenC {
        #[arg(long)]
        out_dir: PathBuf,
    },
    /// Make a plug-in component of a core module built for wasm32-wasip1.
    New {
        core: PathBuf,
        #[arg(short, long)]
        output: PathBuf,
        /// Embed the world's type information first (when the module lacks it).
        #[arg(long)]
        embed_wit: bool,
        /// Let the WASI adapter allocate with memory.grow instead of the module's cabi_realloc.
        #[arg(long)]
        realloc_via_memory_grow: bool,
    },
}

fn failed(what: &str, e: impl std::fmt::Display) -> CliError {
    CliError::new("component", format!("{what}: {e:#}"))
}

fn world() -> Result<(Resolve, WorldId), CliError> {
    let mut resolve = Resolve::default();
    let package = resolve.push_str("plugin.wit", WORLD_WIT).map_err(|e| failed("read the plug-in world", e))?;
    let world = resolve.select_world(&[package], Some("plugin")).map_err(|e| failed("find the plug-in world", e))?;
    Ok((resolve, world))
}

impl Component {
    pub(crate) fn run(self, g: &Global) -> Result<ExitCode, CliError> {
        let (mut resolve, world_id) = world()?;
        match self {
            Component::BindgenC { out_dir } => {
                let mut files = wit_bindgen_core::Files::default();
                wit_bindgen_c::Opts::default()
                    .build()
                    .generate(&mut resolve, world_id, &mut files)
                    .map_err(|e| failed("generate the C bindings", e))?;
                std::fs::create_dir_all(&out_dir)
                    .map_err(|e| CliError::new("io", format!("create {}: {e}", out_dir.display())))?;
                let mut written = Vec::new();
                for (name, bytes) in files.iter() {
                    let path = out_dir.join(name);
                    std::fs::write(&path, bytes)
                        .map_err(|e| CliError::new("io", format!("write {}: {e}", path.display())))?;
                    written.push(path.display().to_string());
                }
                g.print(&written, || format!("wrote {}", written.join(", ")))?;
            }
            Component::New { core, output, embed_wit, realloc_via_memory_grow } => {
                let mut bytes = read_file(&core, "core module")?;
                if !bytes.starts_with(b"\0asm\x01\0\0\0") {
                    return Err(CliError::new(
                        "component",
                        format!("{} is not a core WebAssembly module", core.display()),
                    ));
                }
                if embed_wit {
                    wit_component::embed_component_metadata(
                        &mut bytes,
                        &resolve,
                        world_id,
                        wit_component::StringEncoding::UTF8,
                    )
                    .map_err(|e| failed("embed the world", e))?;
                }
                let adapt = imports_wasi_preview1(&bytes).map_err(|e| failed("read the module", e))?;
                let mut encoder = wit_component::ComponentEncoder::default();
                encoder
                    .module(&bytes)
                    .map_err(|e| failed("read the module", e))?
                    .validate(true)
                    .realloc_via_memory_grow(realloc_via_memory_grow);
                if adapt {
                    encoder
                        .adapter(
                            wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME,
                            wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
                        )
                        .map_err(|e| failed("add the WASI adapter", e))?;
                }
                let component =
                    encoder.encode().map_err(|e| failed(&format!("make a component of {}", core.display()), e))?;
                std::fs::write(&output, &component)
                    .map_err(|e| CliError::new("io", format!("write {}: {e}", output.display())))?;
                let size = component.len();
                g.print(&serde_json::json!({"output": output, "bytes": size, "wasi_adapter": adapt}), || {
                    format!(
                        "wrote {} ({size} bytes{})",
                        output.display(),
                        if adapt { ", with the WASI preview1 adapter" } else { "" }
                    )
                })?;
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// Whether the module imports anything from `wasi_snapshot_preview1`.
fn imports_wasi_preview1(bytes: &[u8]) -> anyhow::Result<bool> {
    use wasm_parser_for_components::{Parser, Payload};
    for payload in Parser::new(0).parse_all(bytes) {
        if let Payload::ImportSection(imports) = payload? {
            for import in imports.into_imports() {
                if import?.module == "wasi_snapshot_preview1" {
                    return Ok(true);
                }
            }
        }
    }
    Ok(false)
}
