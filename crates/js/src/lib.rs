//! madbase's JavaScript engine: QuickJS-NG embedded through `rquickjs`.
//!
//! For now only the deploy-time check: [`check_module`] compiles a tenant's
//! function source as an ES module without running it. A function is one
//! self-contained module: `import` of another module fails the check (there
//! is no module loader).
#![warn(missing_docs)]

mod engine;
mod fetch;
pub mod protocol;
pub mod worker;

use rquickjs::{CatchResultExt as _, CaughtError, Context, Module, Runtime};

/// Memory limit of the runtime that compiles a module at deploy.
pub const CHECK_MEMORY_LIMIT: usize = 64 * 1024 * 1024;

/// Maximum stack size of the compiling runtime.
const CHECK_STACK_LIMIT: usize = 1024 * 1024;

/// A module that does not compile.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} (line {line:?}, column {column:?})")]
pub struct SyntaxError {
    /// The engine's message, e.g. `unexpected token in expression: ')'`.
    pub message: String,
    /// 1-based line of the error, when the engine reports one.
    pub line: Option<u32>,
    /// 1-based column of the error, when the engine reports one.
    pub column: Option<u32>,
}

impl SyntaxError {
    fn other(message: impl Into<String>) -> Self {
        SyntaxError {
            message: message.into(),
            line: None,
            column: None,
        }
    }
}

/// Compiles (does not evaluate) `source` as the ES module `name` in a fresh
/// runtime with a memory limit. Top-level code never runs.
pub fn check_module(name: &str, source: &str) -> Result<(), SyntaxError> {
    let rt = Runtime::new().map_err(|e| SyntaxError::other(format!("engine: {e}")))?;
    rt.set_memory_limit(CHECK_MEMORY_LIMIT);
    rt.set_max_stack_size(CHECK_STACK_LIMIT);
    let ctx = Context::full(&rt).map_err(|e| SyntaxError::other(format!("engine: {e}")))?;
    ctx.with(
        |ctx| match Module::declare(ctx.clone(), name, source).catch(&ctx) {
            Ok(_) => Ok(()),
            Err(CaughtError::Exception(ex)) => {
                let message = ex.message().unwrap_or_else(|| "syntax error".to_owned());
                let (line, column) = position(ex.stack().as_deref(), name);
                Err(SyntaxError {
                    message,
                    line,
                    column,
                })
            }
            Err(CaughtError::Value(v)) => Err(SyntaxError::other(format!("{v:?}"))),
            Err(CaughtError::Error(e)) => Err(SyntaxError::other(e.to_string())),
        },
    )
}

/// The `name:line:column` of the first stack frame naming the module.
fn position(stack: Option<&str>, name: &str) -> (Option<u32>, Option<u32>) {
    let Some(stack) = stack else {
        return (None, None);
    };
    let prefix = format!("{name}:");
    for frame in stack.lines() {
        if let Some(at) = frame.find(&prefix) {
            let rest = &frame[at + prefix.len()..];
            let rest = rest.trim_end_matches(')');
            let mut parts = rest.split(':');
            let line = parts.next().and_then(|s| s.trim().parse().ok());
            let column = parts.next().and_then(|s| s.trim().parse().ok());
            if line.is_some() {
                return (line, column);
            }
        }
    }
    (None, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deno_serve_module_compiles() {
        let src = r#"Deno.serve(async (req) => new Response("ok"));"#;
        assert_eq!(check_module("hello", src), Ok(()));
    }

    #[test]
    fn export_default_fetch_compiles() {
        let src = "export default { async fetch(req) { return new Response('hi'); } };\n";
        assert_eq!(check_module("hello", src), Ok(()));
    }

    #[test]
    fn syntax_error_reports_line() {
        let src = "const a = 1;\nconst b = 2;\nconst c = (;\n";
        let err = check_module("broken", src).expect_err("must not compile");
        assert!(!err.message.is_empty());
        assert_eq!(err.line, Some(3), "{err:?}");
    }

    #[test]
    fn top_level_code_is_not_run() {
        // Would hang (and throw) if evaluated; compiling returns at once.
        let src = "while (true) {}\nthrow new Error('ran');\n";
        assert_eq!(check_module("loop", src), Ok(()));
    }

    #[test]
    fn imports_are_rejected() {
        // A function is one self-contained module: there is no loader.
        let src = "import x from 'npm:thing';\nDeno.serve(() => new Response(x));\n";
        let err = check_module("imports", src).expect_err("no module loader");
        assert!(err.message.contains("npm:thing"), "{err:?}");
    }
}
