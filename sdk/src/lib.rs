//! Write plughost plug-ins in Rust.
//!
//! A plug-in is a type that implements [`Plugin`], exported with [`export_plugin!`],
//! built for `wasm32-wasip2`:
//!
//! ```ignore
//! use plughost_sdk::prelude::*;
//!
//! struct Greeter;
//!
//! impl Plugin for Greeter {
//!     fn execute(ctx: &mut Context) -> Result<(), PluginError> {
//!         let mut target = ctx.target().cloned().ok_or_else(|| PluginError::permanent("no Target"))?;
//!         let name = target.text("name").unwrap_or("stranger").to_owned();
//!         target.set("description", format!("Hello, {name}"));
//!         trace!("greeted {name}");
//!         ctx.set_target(target);
//!         Ok(())
//!     }
//! }
//!
//! export_plugin!(Greeter);
//! ```
//!
//! The types are the ones generated from the `plughost:plugin` WIT world, with
//! helper methods added here, so nothing is converted twice.

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "plugin",
        pub_export_macro: true,
        export_macro_name: "__export_plugin_world",
        default_bindings_module: "plughost_sdk::bindings",
    });
}

mod context;
mod value;

pub use bindings::plughost::plugin::types::{
    Attribute, Condition, ConditionGroup, ConditionOperator, Entity, EntityCollection, EntityReference,
    ExecutionContext, ExecutionResult, Filter, LogicalOperator, Mode, Order, Parameter, ParameterValue, PluginError,
    Query, ServiceError, Stage, Value,
};
pub use context::Context;

/// The data API, as a plug-in sees it (Dataverse IOrganizationService).
///
/// Every call re-enters the host's event pipeline one level deeper.
pub mod service {
    pub use crate::bindings::plughost::plugin::organization_service::{
        create, delete, execute, retrieve, retrieve_multiple, update,
    };
}

/// Writes one line to the plug-in trace log (Dataverse ITracingService).
pub fn trace(message: &str) {
    bindings::plughost::plugin::tracing::trace(message);
}

/// Writes a formatted line to the plug-in trace log.
#[macro_export]
macro_rules! trace {
    ($($arg:tt)*) => {
        $crate::trace(&::std::format!($($arg)*))
    };
}

/// A plug-in: one `execute` per event it is registered for.
///
/// Plug-ins must be stateless between invocations: a step may run them in a fresh
/// instance every time or reuse an instance, as Dataverse does.
pub trait Plugin {
    /// Handles one event. Return an error to stop the operation (synchronous
    /// steps) or fail the system job (asynchronous steps).
    fn execute(ctx: &mut Context) -> Result<(), PluginError>;
}

/// Exports a [`Plugin`] type as the component's `handler` interface.
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        const _: () = {
            struct __PlughostExport;
            impl $crate::bindings::exports::plughost::plugin::handler::Guest for __PlughostExport {
                fn execute(
                    context: $crate::ExecutionContext,
                ) -> ::core::result::Result<$crate::ExecutionResult, $crate::PluginError> {
                    $crate::__run::<$plugin>(context)
                }
            }
    $crate::bindings::__export_plugin_world!(__PlughostExport with_types_in $crate::bindings);
        };
    };
}

#[doc(hidden)]
pub fn __run<P: Plugin>(context: ExecutionContext) -> Result<ExecutionResult, PluginError> {
    let mut ctx = Context::new(context);
    P::execute(&mut ctx)?;
    Ok(ctx.into_result())
}

/// Everything a plug-in usually needs.
pub mod prelude {
    pub use crate::service;
    pub use crate::{
        Context, Entity, EntityReference, Mode, ParameterValue, Plugin, PluginError, Query, ServiceError, Stage, Value,
        export_plugin, trace,
    };
}

impl PluginError {
    /// A failure that retrying will not fix; the message is shown to the caller.
    pub fn permanent(message: impl Into<String>) -> Self {
        PluginError::Permanent(message.into())
    }

    /// A transient failure: the asynchronous service retries the job with backoff.
    pub fn retryable(message: impl Into<String>) -> Self {
        PluginError::Retryable(message.into())
    }
}

impl From<ServiceError> for PluginError {
    fn from(error: ServiceError) -> Self {
        PluginError::Permanent(format!("organization service: {error:?}"))
    }
}
