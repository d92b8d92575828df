//! Route tables that know what they route.
//!
//! The API's routes are built through [`Routes`], which hands axum its `Router`
//! and keeps the list of (method, path) it serves. The OpenAPI document is
//! checked against that list in both directions, so a route cannot be served
//! undocumented nor documented unserved.

use axum::Router;
use axum::handler::Handler;
use axum::http::Method;
use axum::routing::MethodRouter;

use crate::state::AppState;

/// The methods served at one path, and the handlers serving them.
pub(crate) struct Methods {
    router: MethodRouter<AppState>,
    methods: Vec<Method>,
}

/// A path's first method, with its handler.
macro_rules! first_method {
    ($($name:ident => $method:ident),*) => {
        $(
            pub(crate) fn $name<H, T>(handler: H) -> Methods
            where
                H: Handler<T, AppState>,
                T: 'static,
            {
                Methods {
                    router: axum::routing::$name(handler),
                    methods: vec![Method::$method],
                }
            }
        )*
    };
}

/// Another method at the same path, with its handler.
macro_rules! more_methods {
    ($($name:ident => $method:ident),*) => {
        impl Methods {
            $(
                pub(crate) fn $name<H, T>(mut self, handler: H) -> Self
                where
                    H: Handler<T, AppState>,
                    T: 'static,
                {
                    self.router = self.router.$name(handler);
                    self.methods.push(Method::$method);
                    self
                }
            )*
        }
    };
}

// What the route tables use: no path is served by PATCH alone, and GET always
// comes first.
first_method!(get => GET, post => POST, put => PUT, delete => DELETE);
more_methods!(post => POST, put => PUT, patch => PATCH, delete => DELETE);

impl Methods {
    /// Wraps the handlers, e.g. in a layer; the methods served stay the same.
    pub(crate) fn map(
        mut self,
        f: impl FnOnce(MethodRouter<AppState>) -> MethodRouter<AppState>,
    ) -> Self {
        self.router = f(self.router);
        self
    }
}

/// A `Router` and the (method, path) pairs it serves.
#[derive(Default)]
pub(crate) struct Routes {
    router: Router<AppState>,
    served: Vec<(Method, String)>,
}

impl Routes {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    pub(crate) fn route(mut self, path: &str, methods: Methods) -> Self {
        self.served
            .extend(methods.methods.into_iter().map(|m| (m, path.to_owned())));
        self.router = self.router.route(path, methods.router);
        self
    }

    pub(crate) fn merge(mut self, other: Routes) -> Self {
        self.served.extend(other.served);
        self.router = self.router.merge(other.router);
        self
    }

    /// What is served, below `prefix`, as the OpenAPI document names it:
    /// lowercase methods, and a catch-all `{*name}` as `{name}`.
    pub(crate) fn served(&self, prefix: &str) -> Vec<(String, String)> {
        self.served
            .iter()
            .map(|(m, p)| {
                (
                    m.as_str().to_lowercase(),
                    format!("{prefix}{}", p.replace("{*", "{")),
                )
            })
            .collect()
    }

    pub(crate) fn into_router(self) -> Router<AppState> {
        self.router
    }
}
