//! `export` and `import`: RabbitMQ's definitions format through /api/definitions.

use super::client::{api_path, Method};
use super::error::{CtlError, CtlResult};
use super::{read_input, Ctx};
use std::io::Write;
use std::path::PathBuf;

/// Largest definitions file `import` reads (the API's own body limit).
const MAX_DEFINITIONS: u64 = 64 * 1024 * 1024;

/// `export` arguments.
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// File to write (`-` or none: stdout).
    file: Option<PathBuf>,
}

/// `import` arguments.
#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// File to read (`-` or none: stdin).
    file: Option<PathBuf>,
}

fn definitions_path(ctx: &Ctx) -> String {
    match &ctx.vhost {
        Some(v) => api_path(&["definitions", v]),
        None => "/api/definitions".into(),
    }
}

/// Writes the definitions, pretty-printed.
pub(crate) fn export(ctx: &Ctx, a: &ExportArgs) -> CtlResult<()> {
    let defs = ctx.client.get_json(&definitions_path(ctx))?;
    let mut text = serde_json::to_vec_pretty(&defs)
        .map_err(|e| CtlError::Failed(format!("cannot encode the definitions: {e}")))?;
    text.push(b'\n');
    match &a.file {
        Some(p) if p.as_os_str() != "-" => {
            // Written beside the target and renamed, so a failed export leaves no half file.
            let tmp = p.with_extension("ferrymq-ctl.tmp");
            std::fs::write(&tmp, &text)
                .and_then(|_| std::fs::rename(&tmp, p))
                .map_err(|e| {
                    let _ = std::fs::remove_file(&tmp);
                    CtlError::Failed(format!("cannot write {}: {e}", p.display()))
                })?;
            eprintln!("definitions written to {}", p.display());
            Ok(())
        }
        _ => {
            let mut out = std::io::stdout().lock();
            out.write_all(&text)
                .and_then(|_| out.flush())
                .map_err(super::write_error)
        }
    }
}

/// Uploads a definitions file; the API checks it whole before applying any of it.
pub(crate) fn import(ctx: &Ctx, a: &ImportArgs) -> CtlResult<()> {
    let body = read_input(a.file.as_ref(), MAX_DEFINITIONS, "the definitions")?;
    // A local check gives a clear message for a wrong file instead of the API's 400.
    if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(&body) {
        return Err(CtlError::Usage(format!(
            "the definitions are not JSON: {e}"
        )));
    }
    ctx.client
        .request(Method::Post, &definitions_path(ctx), Some(&body), &[])?;
    ctx.done("definitions imported")
}
