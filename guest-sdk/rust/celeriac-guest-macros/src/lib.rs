//! The procedural macros of `celeriac-guest`: `#[task]`, which describes a task function
//! (name, options, parameters) in a hidden `const` next to it, and `export_tasks!`, which
//! turns a list of such functions into the component's `tasks`/`run` exports. Use them
//! through `celeriac_guest`, which re-exports both and documents them; the expansions name
//! `::celeriac_guest` and need nothing else in scope.
//!
//! The argument-binding rules themselves run in `celeriac_guest` at run time (and are
//! tested there); these macros only classify parameters and check options.

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::{format_ident, quote, quote_spanned};
use syn::ext::IdentExt;
use syn::parse::Parser;
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{
    Expr, ExprArray, ExprLit, FnArg, Ident, ItemFn, Lit, Meta, Pat, Path, ReturnType, Token, Type,
};

/// Marks a plain function as a Celery task.
///
/// ```text
/// #[celeriac_guest::task(name = "tasks.add", max_retries = 5, autoretry_for = ["ConnectionError"])]
/// fn add(x: i64, y: i64) -> i64 { x + y }
/// ```
///
/// # Options
///
/// Celery's `@app.task(...)` options, with Celery's names; an option left out means "the
/// worker's default", as in Celery.
///
/// | option | value | Celery default |
/// |---|---|---|
/// | `name` | string | the function's name |
/// | `max_retries` | integer, or `None` for unlimited | 3 |
/// | `retry_forever` | bool (same as `max_retries = None`) | false |
/// | `default_retry_delay` | seconds | 180 |
/// | `rate_limit` | `"10/s"`, `"100/m"`, `"1000/h"` or a number per second | none |
/// | `time_limit`, `soft_time_limit` | seconds (soft below hard) | the worker's |
/// | `acks_late`, `ignore_result`, `track_started` | bool | the worker's |
/// | `autoretry_for` | `["KeyError", "myapp.Flaky"]` (or bare names) | `[]` |
/// | `retry_backoff` | bool or factor in seconds | off |
/// | `retry_backoff_max` | seconds | 600 |
/// | `retry_jitter` | bool | true |
///
/// A bare flag (`#[task(acks_late)]`) means `= true`.
///
/// # Parameters
///
/// Each parameter is an owned `serde::Deserialize` type, bound like a Python parameter of the
/// same name: by position from `args`, then by name from `kwargs`. An `Option<_>` parameter
/// may be left out. A parameter of type `celeriac_guest::Args` takes the remaining positional
/// arguments (`*args`), one of type `celeriac_guest::Kwargs` the remaining keyword arguments
/// (`**kwargs`); they come last, in that order. A first parameter `task: &Task` makes the task
/// bound. An unbound task with more than one free positional parameter (or `Args`) is what
/// Celery calls a "new style" errback: used in a `link_error`, the worker where the task
/// failed calls it inline with `(request, exc, traceback, *args)` as JSON values (see
/// `Task`-less `rs.log_error` in the example crate). Types are recognised by their last path segment (`Option`, `Args`, `Kwargs`, `Task`),
/// so do not rename them with `use … as`.
///
/// # Return type
///
/// Any `serde::Serialize` type (the result, as JSON; `()` is `null`), `Result<T, E>` /
/// `TaskResult<T>` where `E: Into<TaskError>`, or `!`.
///
/// The macro keeps the function as written and adds a hidden constant next to it, which
/// `export_tasks!` refers to.
#[proc_macro_attribute]
pub fn task(attr: TokenStream, item: TokenStream) -> TokenStream {
    let func = match syn::parse::<ItemFn>(item.clone()) {
        Ok(func) => func,
        Err(err) => {
            // Keep the item so that its own errors are reported, not just ours.
            let mut out = TokenStream2::from(item);
            out.extend(err.to_compile_error());
            return out.into();
        }
    };
    match expand_task(attr.into(), &func) {
        Ok(tokens) => tokens.into(),
        Err(err) => {
            let err = err.to_compile_error();
            quote!(#func #err).into()
        }
    }
}

/// Exports the listed `#[task]` functions as the component's `tasks` and `run`.
///
/// ```text
/// celeriac_guest::export_tasks!(add, mul, reports::monthly);
/// ```
///
/// Call it once per component (the crate is the component), at module level, with every
/// task it serves; paths to functions in other modules are fine as long as the functions
/// are visible from here. Two tasks with the same Celery name are a compile error. An
/// unknown function shows up as "cannot find value `__celeriac_task_<name>`": the constant
/// `#[task]` would have generated.
///
/// `run` looks the task up by `request.task` (an unknown name raises
/// `celery.exceptions.NotRegistered`), binds the arguments, calls the function, applies
/// `autoretry_for`, and returns the JSON result or the task error.
#[proc_macro]
pub fn export_tasks(input: TokenStream) -> TokenStream {
    match expand_export(input.into()) {
        Ok(tokens) => tokens.into(),
        Err(err) => err.to_compile_error().into(),
    }
}

/// The name of the hidden const `#[task]` puts next to function `ident`.
fn spec_ident(ident: &Ident) -> Ident {
    format_ident!("__celeriac_task_{}", ident.unraw(), span = ident.span())
}

// ---------------------------------------------------------------------------------------
// #[task(...)] options
// ---------------------------------------------------------------------------------------

/// The parsed `#[task(...)]` options; `None` = not given.
#[derive(Default)]
struct Options {
    name: Option<String>,
    max_retries: Option<u32>,
    retry_forever: Option<bool>,
    default_retry_delay: Option<f64>,
    rate_limit: Option<String>,
    time_limit: Option<f64>,
    soft_time_limit: Option<f64>,
    acks_late: Option<bool>,
    ignore_result: Option<bool>,
    track_started: Option<bool>,
    autoretry_for: Option<Vec<String>>,
    retry_backoff: Option<u32>,
    retry_backoff_max: Option<u32>,
    retry_jitter: Option<bool>,
}

const OPTION_NAMES: &str = "name, max_retries, retry_forever, default_retry_delay, rate_limit, \
    time_limit, soft_time_limit, acks_late, ignore_result, track_started, autoretry_for, \
    retry_backoff, retry_backoff_max, retry_jitter";

fn parse_options(attr: TokenStream2) -> syn::Result<Options> {
    let metas = Punctuated::<Meta, Token![,]>::parse_terminated.parse2(attr)?;
    let mut opts = Options::default();
    for meta in metas {
        let key = meta
            .path()
            .get_ident()
            .map(|i| i.to_string())
            .ok_or_else(|| {
                syn::Error::new(
                    meta.path().span(),
                    format!("expected one of: {OPTION_NAMES}"),
                )
            })?;
        // `#[task(acks_late)]` is `acks_late = true`.
        let value = match &meta {
            Meta::Path(path) => Expr::Lit(ExprLit {
                attrs: Vec::new(),
                lit: Lit::Bool(syn::LitBool::new(true, path.span())),
            }),
            Meta::NameValue(nv) => nv.value.clone(),
            Meta::List(list) => {
                return Err(syn::Error::new(list.span(), format!("write `{key} = …`")));
            }
        };
        let span = meta.span();
        macro_rules! set {
            ($field:ident, $parse:expr) => {{
                if opts.$field.is_some() {
                    return Err(syn::Error::new(span, format!("`{key}` given twice")));
                }
                opts.$field = Some($parse);
            }};
        }
        match key.as_str() {
            "name" => set!(name, {
                let name = lit_str(&value)?;
                if name.is_empty() {
                    return Err(syn::Error::new(
                        value.span(),
                        "the task name cannot be empty",
                    ));
                }
                name
            }),
            "max_retries" => {
                // Celery's max_retries=None means "retry forever".
                if is_none(&value) {
                    set!(retry_forever, true)
                } else {
                    set!(max_retries, lit_int(&value)?)
                }
            }
            "retry_forever" => set!(retry_forever, lit_bool(&value)?),
            "default_retry_delay" => set!(default_retry_delay, lit_seconds(&value)?),
            "rate_limit" => set!(
                rate_limit,
                match &value {
                    // Celery accepts a bare number: tasks per second.
                    Expr::Lit(ExprLit {
                        lit: Lit::Int(i), ..
                    }) => i.base10_digits().to_owned(),
                    Expr::Lit(ExprLit {
                        lit: Lit::Float(f), ..
                    }) => f.base10_digits().to_owned(),
                    other => lit_str(other)?,
                }
            ),
            "time_limit" => set!(time_limit, lit_seconds(&value)?),
            "soft_time_limit" => set!(soft_time_limit, lit_seconds(&value)?),
            "acks_late" => set!(acks_late, lit_bool(&value)?),
            "ignore_result" => set!(ignore_result, lit_bool(&value)?),
            "track_started" => set!(track_started, lit_bool(&value)?),
            "autoretry_for" => set!(autoretry_for, class_names(&value)?),
            "retry_backoff" => set!(
                retry_backoff,
                match &value {
                    // Celery's retry_backoff=True is a factor of 1 second.
                    Expr::Lit(ExprLit {
                        lit: Lit::Bool(b), ..
                    }) => u32::from(b.value),
                    other => lit_int(other)?,
                }
            ),
            "retry_backoff_max" => set!(retry_backoff_max, lit_int(&value)?),
            "retry_jitter" => set!(retry_jitter, lit_bool(&value)?),
            _ => {
                return Err(syn::Error::new(
                    meta.path().span(),
                    format!("unknown task option `{key}`; expected one of: {OPTION_NAMES}"),
                ));
            }
        }
    }
    if opts.max_retries.is_some() && opts.retry_forever == Some(true) {
        return Err(syn::Error::new(
            Span::call_site(),
            "`max_retries = N` and `retry_forever` (or `max_retries = None`) contradict each other",
        ));
    }
    if let (Some(soft), Some(hard)) = (opts.soft_time_limit, opts.time_limit)
        && soft >= hard
    {
        return Err(syn::Error::new(
            Span::call_site(),
            "soft_time_limit must be below time_limit",
        ));
    }
    Ok(opts)
}

fn is_none(expr: &Expr) -> bool {
    matches!(expr, Expr::Path(p) if p.path.is_ident("None"))
}

fn lit_str(expr: &Expr) -> syn::Result<String> {
    match expr {
        Expr::Lit(ExprLit {
            lit: Lit::Str(s), ..
        }) => Ok(s.value()),
        other => Err(syn::Error::new(other.span(), "expected a string literal")),
    }
}

fn lit_bool(expr: &Expr) -> syn::Result<bool> {
    match expr {
        Expr::Lit(ExprLit {
            lit: Lit::Bool(b), ..
        }) => Ok(b.value),
        other => Err(syn::Error::new(other.span(), "expected `true` or `false`")),
    }
}

fn lit_int(expr: &Expr) -> syn::Result<u32> {
    match expr {
        Expr::Lit(ExprLit {
            lit: Lit::Int(i), ..
        }) => i
            .base10_parse()
            .map_err(|_| syn::Error::new(i.span(), "expected a non-negative integer (u32)")),
        other => Err(syn::Error::new(
            other.span(),
            "expected a non-negative integer (u32)",
        )),
    }
}

/// Seconds, written as an integer or a float literal.
fn lit_seconds(expr: &Expr) -> syn::Result<f64> {
    let value = match expr {
        Expr::Lit(ExprLit {
            lit: Lit::Int(i), ..
        }) => i.base10_parse::<f64>()?,
        Expr::Lit(ExprLit {
            lit: Lit::Float(f), ..
        }) => f.base10_parse::<f64>()?,
        other => {
            return Err(syn::Error::new(
                other.span(),
                "expected a number of seconds",
            ));
        }
    };
    if value.is_finite() && value > 0.0 {
        Ok(value)
    } else {
        Err(syn::Error::new(
            expr.span(),
            "expected a positive number of seconds",
        ))
    }
}

/// `["KeyError", "myapp.Flaky"]`, or bare names: `[KeyError, myapp::Flaky]` (a path is
/// written with dots, Python-style).
fn class_names(expr: &Expr) -> syn::Result<Vec<String>> {
    let Expr::Array(ExprArray { elems, .. }) = expr else {
        return Err(syn::Error::new(
            expr.span(),
            "expected a list of exception class names",
        ));
    };
    elems
        .iter()
        .map(|elem| match elem {
            Expr::Path(p) => Ok(p
                .path
                .segments
                .iter()
                .map(|s| s.ident.to_string())
                .collect::<Vec<_>>()
                .join(".")),
            other => lit_str(other),
        })
        .collect()
}

fn options_tokens(opts: &Options) -> TokenStream2 {
    let mut fields = Vec::new();
    if let Some(v) = opts.max_retries {
        fields.push(quote!(max_retries: ::core::option::Option::Some(#v)));
    }
    if let Some(v) = opts.retry_forever {
        fields.push(quote!(retry_forever: #v));
    }
    let mut f64_field = |name: &str, value: Option<f64>| {
        if let Some(v) = value {
            let ident = format_ident!("{name}");
            fields.push(quote!(#ident: ::core::option::Option::Some(#v)));
        }
    };
    f64_field("default_retry_delay", opts.default_retry_delay);
    f64_field("time_limit", opts.time_limit);
    f64_field("soft_time_limit", opts.soft_time_limit);
    if let Some(v) = &opts.rate_limit {
        fields.push(quote!(rate_limit: ::core::option::Option::Some(#v)));
    }
    for (name, value) in [
        ("acks_late", opts.acks_late),
        ("ignore_result", opts.ignore_result),
        ("track_started", opts.track_started),
        ("retry_jitter", opts.retry_jitter),
    ] {
        if let Some(v) = value {
            let ident = format_ident!("{name}");
            fields.push(quote!(#ident: ::core::option::Option::Some(#v)));
        }
    }
    if let Some(names) = &opts.autoretry_for {
        fields.push(quote!(autoretry_for: &[#(#names),*]));
    }
    for (name, value) in [
        ("retry_backoff", opts.retry_backoff),
        ("retry_backoff_max", opts.retry_backoff_max),
    ] {
        if let Some(v) = value {
            let ident = format_ident!("{name}");
            fields.push(quote!(#ident: ::core::option::Option::Some(#v)));
        }
    }
    quote! {
        ::celeriac_guest::__private::StaticOptions {
            #(#fields,)*
            ..::celeriac_guest::__private::StaticOptions::DEFAULT
        }
    }
}

// ---------------------------------------------------------------------------------------
// #[task] on the function
// ---------------------------------------------------------------------------------------

/// How one parameter of the task function is filled.
enum ParamKind {
    /// `task: &Task`, the bound task.
    Task,
    /// A value bound by position or name; `required` is false for `Option<_>`.
    Value {
        name: String,
        /// Boxed: a `syn::Type` is large and the other variants are empty.
        ty: Box<Type>,
        required: bool,
    },
    /// `Args`: the leftover positional arguments.
    VarArgs,
    /// `Kwargs`: the leftover keyword arguments.
    VarKwargs,
}

/// The last path segment's name of a type, if it is a plain path (`a::b::Option<T>` → `Option`).
fn last_segment(ty: &Type) -> Option<&syn::PathSegment> {
    match ty {
        Type::Path(p) if p.qself.is_none() => p.path.segments.last(),
        Type::Group(g) => last_segment(&g.elem),
        Type::Paren(p) => last_segment(&p.elem),
        _ => None,
    }
}

fn is_named(ty: &Type, name: &str) -> bool {
    last_segment(ty).is_some_and(|s| s.ident == name && s.arguments.is_none())
}

fn classify(func: &ItemFn) -> syn::Result<Vec<(ParamKind, Span)>> {
    let mut kinds = Vec::new();
    for (index, input) in func.sig.inputs.iter().enumerate() {
        let FnArg::Typed(arg) = input else {
            return Err(syn::Error::new(
                input.span(),
                "a task is a free function, not a method",
            ));
        };
        let span = arg.span();
        let ty = &*arg.ty;
        if let Type::Reference(reference) = ty {
            if is_named(&reference.elem, "Task") && reference.mutability.is_none() {
                if index != 0 {
                    return Err(syn::Error::new(
                        span,
                        "`task: &Task` must be the first parameter",
                    ));
                }
                kinds.push((ParamKind::Task, span));
                continue;
            }
            return Err(syn::Error::new(
                ty.span(),
                "task parameters are deserialized, so they must be owned types (String, not &str)",
            ));
        }
        let Pat::Ident(pat) = &*arg.pat else {
            return Err(syn::Error::new(
                arg.pat.span(),
                "task parameters need plain names: the name is the keyword argument",
            ));
        };
        if pat.by_ref.is_some() || pat.subpat.is_some() {
            return Err(syn::Error::new(
                pat.span(),
                "task parameters need plain names",
            ));
        }
        let kind = if is_named(ty, "Args") {
            ParamKind::VarArgs
        } else if is_named(ty, "Kwargs") {
            ParamKind::VarKwargs
        } else {
            let required = last_segment(ty).is_none_or(|s| s.ident != "Option");
            ParamKind::Value {
                name: pat.ident.unraw().to_string(),
                ty: Box::new(ty.clone()),
                required,
            }
        };
        kinds.push((kind, span));
    }

    // Python's order: named parameters, then *args, then **kwargs; each at most once.
    let mut seen_var_args = false;
    let mut seen_var_kwargs = false;
    for (kind, span) in &kinds {
        match kind {
            ParamKind::Task => {}
            ParamKind::Value { .. } if seen_var_args || seen_var_kwargs => {
                return Err(syn::Error::new(
                    *span,
                    "named parameters must come before `Args` and `Kwargs`",
                ));
            }
            ParamKind::Value { .. } => {}
            ParamKind::VarArgs if seen_var_args || seen_var_kwargs => {
                return Err(syn::Error::new(
                    *span,
                    "`Args` must come once, before `Kwargs`",
                ));
            }
            ParamKind::VarArgs => seen_var_args = true,
            ParamKind::VarKwargs if seen_var_kwargs => {
                return Err(syn::Error::new(*span, "`Kwargs` must come once"));
            }
            ParamKind::VarKwargs => seen_var_kwargs = true,
        }
    }
    Ok(kinds)
}

/// How the function's return value becomes the task's outcome.
enum Returns {
    /// No return type: the result is `null`, as Python's `None`.
    Unit,
    /// `-> T`: the value is the result.
    Value,
    /// `-> Result<T, E>` / `TaskResult<T>`: `Err` converts into `TaskError`.
    Result,
    /// `-> !`: the function never returns.
    Never,
}

fn returns(func: &ItemFn) -> Returns {
    match &func.sig.output {
        ReturnType::Default => Returns::Unit,
        ReturnType::Type(_, ty) => match &**ty {
            Type::Never(_) => Returns::Never,
            ty if last_segment(ty)
                .is_some_and(|s| s.ident == "Result" || s.ident == "TaskResult") =>
            {
                Returns::Result
            }
            _ => Returns::Value,
        },
    }
}

fn expand_task(attr: TokenStream2, func: &ItemFn) -> syn::Result<TokenStream2> {
    let opts = parse_options(attr)?;
    let sig = &func.sig;
    if let Some(asyncness) = &sig.asyncness {
        return Err(syn::Error::new(asyncness.span(), "tasks cannot be async"));
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        return Err(syn::Error::new(
            sig.generics.span(),
            "tasks cannot be generic",
        ));
    }
    if let Some(unsafety) = &sig.unsafety {
        return Err(syn::Error::new(
            unsafety.span(),
            "tasks cannot be unsafe fns: the worker calls them with any input",
        ));
    }
    if let Some(variadic) = &sig.variadic {
        return Err(syn::Error::new(variadic.span(), "tasks cannot be variadic"));
    }

    let ident = &sig.ident;
    let func_name = ident.unraw().to_string();
    let task_name = opts.name.clone().unwrap_or_else(|| func_name.clone());
    let kinds = classify(func)?;

    let mut params = Vec::new();
    let mut bindings = Vec::new();
    let mut call_args = Vec::new();
    let mut var_args = false;
    let mut var_kwargs = false;
    let mut bound = false;
    for (position, (kind, span)) in kinds.iter().enumerate() {
        let local = format_ident!("__celeriac_arg{position}");
        match kind {
            ParamKind::Task => {
                bound = true;
                call_args.push(quote!(__celeriac_task));
            }
            ParamKind::Value { name, ty, required } => {
                let index = params.len();
                params.push(
                    quote!(::celeriac_guest::__private::Param { name: #name, required: #required }),
                );
                // Spanned at the parameter, so "Deserialize is not implemented" points there.
                bindings.push(quote_spanned! {*span=>
                    let #local: #ty = __celeriac_bound.take::<#ty>(#index)?;
                });
                call_args.push(quote!(#local));
            }
            ParamKind::VarArgs => {
                var_args = true;
                call_args.push(quote!(__celeriac_bound.take_args()));
            }
            ParamKind::VarKwargs => {
                var_kwargs = true;
                call_args.push(quote!(__celeriac_bound.take_kwargs()));
            }
        }
    }

    let call = quote!(#ident(#(#call_args),*));
    // Spanned at the return type, so "Serialize is not implemented" points there.
    let ret_span = match &sig.output {
        ReturnType::Default => sig.ident.span(),
        ReturnType::Type(_, ty) => ty.span(),
    };
    let finish = match returns(func) {
        Returns::Unit => quote! {
            #call;
            ::celeriac_guest::__private::to_json(&())
        },
        Returns::Value => quote_spanned! {ret_span=>
            let __celeriac_ret = #call;
            ::celeriac_guest::__private::to_json(&__celeriac_ret)
        },
        Returns::Result => quote_spanned! {ret_span=>
            match #call {
                ::core::result::Result::Ok(__celeriac_ret) => ::celeriac_guest::__private::to_json(&__celeriac_ret),
                ::core::result::Result::Err(__celeriac_err) => ::core::result::Result::Err(
                    ::core::convert::Into::<::celeriac_guest::TaskError>::into(__celeriac_err),
                ),
            }
        },
        Returns::Never => quote!(#call),
    };

    let vis = &func.vis;
    let spec = spec_ident(ident);
    let options = options_tokens(&opts);
    let doc = format!(
        "The celeriac task descriptor of `{func_name}` (`{task_name}`), for `export_tasks!`."
    );
    Ok(quote! {
        #func

        #[doc = #doc]
        #[doc(hidden)]
        #[allow(non_upper_case_globals)]
        #vis const #spec: ::celeriac_guest::__private::TaskSpec = ::celeriac_guest::__private::TaskSpec {
            name: #task_name,
            func: #func_name,
            params: &[#(#params),*],
            var_args: #var_args,
            var_kwargs: #var_kwargs,
            bound: #bound,
            options: #options,
            call: {
                #[allow(unused_variables, unused_mut, clippy::unnecessary_wraps, clippy::let_unit_value)]
                fn __celeriac_call(
                    __celeriac_task: &::celeriac_guest::Task,
                    __celeriac_bound: &mut ::celeriac_guest::__private::Bound,
                ) -> ::core::result::Result<::std::string::String, ::celeriac_guest::TaskError> {
                    #(#bindings)*
                    #finish
                }
                __celeriac_call
            },
        };
    })
}

// ---------------------------------------------------------------------------------------
// export_tasks!(a, b, module::c)
// ---------------------------------------------------------------------------------------

fn expand_export(input: TokenStream2) -> syn::Result<TokenStream2> {
    let paths = Punctuated::<Path, Token![,]>::parse_terminated.parse2(input)?;
    if paths.is_empty() {
        return Err(syn::Error::new(
            Span::call_site(),
            "export_tasks! needs the #[task] functions to export, e.g. export_tasks!(add, mul)",
        ));
    }
    let specs = paths.iter().map(|path| {
        let mut path = path.clone();
        if let Some(last) = path.segments.last_mut() {
            last.ident = spec_ident(&last.ident);
        }
        quote!(&#path)
    });
    Ok(quote! {
        const _: () = {
            const __CELERIAC_TASKS: &[&::celeriac_guest::__private::TaskSpec] = &[#(#specs),*];
            ::core::assert!(
                ::celeriac_guest::__private::names_unique(__CELERIAC_TASKS),
                "export_tasks!: two tasks have the same Celery name",
            );

            struct __CeleriacComponent;

            impl ::celeriac_guest::__private::Guest for __CeleriacComponent {
                fn tasks() -> ::std::vec::Vec<::celeriac_guest::__private::wit::TaskInfo> {
                    ::celeriac_guest::__private::tasks(__CELERIAC_TASKS)
                }

                fn run(
                    request: ::celeriac_guest::__private::wit::Request,
                    args: ::std::string::String,
                    kwargs: ::std::string::String,
                ) -> ::core::result::Result<::std::string::String, ::celeriac_guest::__private::wit::TaskError> {
                    ::celeriac_guest::__private::run(__CELERIAC_TASKS, request, args, kwargs)
                }
            }

            ::celeriac_guest::__export_task_impl!(__CeleriacComponent);
        };
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(attr: &str) -> syn::Result<Options> {
        parse_options(attr.parse().expect("test attribute tokens"))
    }

    fn error(attr: &str) -> String {
        match options(attr) {
            Ok(_) => panic!("`{attr}` should be refused"),
            Err(err) => err.to_string(),
        }
    }

    fn expand(attr: &str, item: &str) -> syn::Result<String> {
        let func: ItemFn = syn::parse_str(item).expect("test item is a function");
        expand_task(attr.parse().expect("test attribute tokens"), &func).map(|t| t.to_string())
    }

    #[test]
    fn options_parse_with_celery_meanings() {
        let opts = options(
            r#"name = "t.x", max_retries = 5, default_retry_delay = 2, rate_limit = 10,
               time_limit = 30.5, soft_time_limit = 20, acks_late, ignore_result = false,
               autoretry_for = ["KeyError", myapp::Flaky], retry_backoff = true,
               retry_backoff_max = 60, retry_jitter = false"#,
        )
        .expect("valid options");
        assert_eq!(opts.name.as_deref(), Some("t.x"));
        assert_eq!(opts.max_retries, Some(5));
        assert_eq!(opts.retry_forever, None);
        assert_eq!(opts.default_retry_delay, Some(2.0));
        assert_eq!(opts.rate_limit.as_deref(), Some("10"));
        assert_eq!(opts.time_limit, Some(30.5));
        assert_eq!(opts.soft_time_limit, Some(20.0));
        assert_eq!(opts.acks_late, Some(true));
        assert_eq!(opts.ignore_result, Some(false));
        assert_eq!(opts.track_started, None);
        assert_eq!(
            opts.autoretry_for,
            Some(vec!["KeyError".to_owned(), "myapp.Flaky".to_owned()])
        );
        assert_eq!(opts.retry_backoff, Some(1));
        assert_eq!(opts.retry_backoff_max, Some(60));
        assert_eq!(opts.retry_jitter, Some(false));
    }

    #[test]
    fn max_retries_none_means_retry_forever() {
        let opts = options("max_retries = None").expect("valid");
        assert_eq!((opts.max_retries, opts.retry_forever), (None, Some(true)));
    }

    #[test]
    fn bad_options_are_refused_with_a_reason() {
        assert!(error("nme = \"x\"").starts_with("unknown task option `nme`"));
        assert_eq!(error("name = \"a\", name = \"b\""), "`name` given twice");
        assert_eq!(error("name = \"\""), "the task name cannot be empty");
        assert_eq!(
            error("max_retries = -1"),
            "expected a non-negative integer (u32)"
        );
        assert_eq!(
            error("retry_backoff_max = 5000000000"),
            "expected a non-negative integer (u32)"
        );
        assert_eq!(
            error("time_limit = 0"),
            "expected a positive number of seconds"
        );
        assert_eq!(error("acks_late = 1"), "expected `true` or `false`");
        assert_eq!(
            error("autoretry_for = \"KeyError\""),
            "expected a list of exception class names"
        );
        assert_eq!(
            error("time_limit = 5, soft_time_limit = 5"),
            "soft_time_limit must be below time_limit"
        );
        assert!(error("max_retries = 2, retry_forever").contains("contradict"));
    }

    #[test]
    fn expansion_describes_parameters_and_defaults_the_name() {
        let out = expand(
            "",
            "fn add(task: &Task, x: i64, y: Option<i64>, rest: Args, kw: Kwargs) -> i64 { x }",
        )
        .expect("expands");
        assert!(out.contains("const __celeriac_task_add"), "{out}");
        assert!(out.contains(r#"name : "add""#), "{out}");
        assert!(
            out.contains(r#"Param { name : "x" , required : true }"#),
            "{out}"
        );
        assert!(
            out.contains(r#"Param { name : "y" , required : false }"#),
            "{out}"
        );
        assert!(out.contains("var_args : true"), "{out}");
        assert!(out.contains("var_kwargs : true"), "{out}");
        assert!(out.contains("add (__celeriac_task , __celeriac_arg1 , __celeriac_arg2 , __celeriac_bound . take_args () , __celeriac_bound . take_kwargs ())"), "{out}");
    }

    #[test]
    fn raw_identifiers_bind_by_their_python_name() {
        let out = expand("name = \"t\"", "fn f(r#type: String) {}").expect("expands");
        assert!(
            out.contains(r#"Param { name : "type" , required : true }"#),
            "{out}"
        );
    }

    #[test]
    fn result_returns_convert_their_error() {
        let out = expand("", "fn f() -> Result<u8, MyError> { Ok(1) }").expect("expands");
        assert!(
            out.contains(
                ":: core :: convert :: Into :: < :: celeriac_guest :: TaskError > :: into"
            ),
            "{out}"
        );
        let out = expand("", "fn f() -> u8 { 1 }").expect("expands");
        assert!(!out.contains("convert :: Into"), "{out}");
    }

    #[test]
    fn unsupported_signatures_are_refused() {
        let err = |item: &str| expand("", item).expect_err("should be refused").to_string();
        assert_eq!(err("async fn f() {}"), "tasks cannot be async");
        assert!(err("unsafe fn f() {}").starts_with("tasks cannot be unsafe"));
        assert_eq!(err("fn f<T>(x: T) {}"), "tasks cannot be generic");
        assert_eq!(
            err("fn f(x: u8, t: &Task) {}"),
            "`task: &Task` must be the first parameter"
        );
        assert!(err("fn f(s: &str) {}").contains("owned types"));
        assert!(err("fn f((a, b): (u8, u8)) {}").contains("plain names"));
        assert_eq!(
            err("fn f(a: Args, x: u8) {}"),
            "named parameters must come before `Args` and `Kwargs`"
        );
        assert_eq!(
            err("fn f(k: Kwargs, a: Args) {}"),
            "`Args` must come once, before `Kwargs`"
        );
    }

    #[test]
    fn export_refers_to_the_generated_constants() {
        let out = expand_export("add, reports::monthly".parse().expect("tokens"))
            .expect("expands")
            .to_string();
        assert!(out.contains("& __celeriac_task_add"), "{out}");
        assert!(
            out.contains("& reports :: __celeriac_task_monthly"),
            "{out}"
        );
        assert!(out.contains("names_unique"), "{out}");
        assert!(expand_export(TokenStream2::new()).is_err());
    }
}
