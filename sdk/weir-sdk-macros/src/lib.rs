//! Attribute macros of `weir-sdk`. They check the item's shape, report mistakes as spanned
//! compile errors, and generate the `wit-bindgen` export glue, so a plugin author writes a
//! plain function or `impl` block.

use proc_macro::TokenStream;
use proc_macro2::Span;
use quote::quote;
use syn::spanned::Spanned;
use syn::{Error, FnArg, ImplItem, Item, ItemFn, ItemImpl, ReturnType, Type};

const EXTRACTOR_SHAPE: &str = "a weir extractor is `fn name(config: &Config, event: &weir_sdk::Event<'_>, out: &mut Vec<f64>) -> weir_sdk::Result<()>`";

fn no_args(attr: TokenStream, name: &str) -> Result<(), Error> {
    if attr.is_empty() {
        Ok(())
    } else {
        Err(Error::new(
            proc_macro2::TokenStream::from(attr).span(),
            format!("#[weir_sdk::{name}] takes no arguments"),
        ))
    }
}

/// Turns `fn(config: &Config, event: &Event<'_>, out: &mut Vec<f64>) -> Result<()>` into a
/// feature-extractor plugin. The function pushes one feature row per event; `Config` is
/// any `serde::Deserialize` type, parsed from the stage's JSON config at `init`.
#[proc_macro_attribute]
pub fn extractor(attr: TokenStream, item: TokenStream) -> TokenStream {
    if let Err(e) = no_args(attr, "extractor") {
        return e.to_compile_error().into();
    }
    let raw = proc_macro2::TokenStream::from(item.clone());
    let func = match syn::parse::<Item>(item) {
        Ok(Item::Fn(func)) => func,
        Ok(other) => {
            let err = Error::new(
                other.span(),
                format!("#[weir_sdk::extractor] goes on a function: {EXTRACTOR_SHAPE}"),
            )
            .to_compile_error();
            return quote!(#raw #err).into();
        }
        Err(e) => {
            let err = e.to_compile_error();
            return quote!(#raw #err).into();
        }
    };
    match expand_extractor(&func) {
        Ok(glue) => quote!(#func #glue).into(),
        Err(e) => {
            let err = e.to_compile_error();
            quote!(#func #err).into()
        }
    }
}

fn ref_inner(arg: &FnArg, mutable: bool, what: &str) -> Result<Type, Error> {
    let FnArg::Typed(pat) = arg else {
        return Err(Error::new(
            arg.span(),
            format!("{EXTRACTOR_SHAPE}: `self` is not allowed"),
        ));
    };
    match &*pat.ty {
        Type::Reference(r) if r.mutability.is_some() == mutable => Ok((*r.elem).clone()),
        other => Err(Error::new(
            other.span(),
            format!(
                "{EXTRACTOR_SHAPE}: the {what} must be {}",
                if mutable {
                    "a `&mut` reference"
                } else {
                    "a `&` reference"
                }
            ),
        )),
    }
}

/// True when `ty` is a path whose last segment is `name` (`Vec<f64>`, `weir_sdk::Event<'_>`).
fn last_segment_is(ty: &Type, name: &str) -> bool {
    matches!(ty, Type::Path(p) if p.path.segments.last().is_some_and(|s| s.ident == name))
}

fn expand_extractor(func: &ItemFn) -> Result<proc_macro2::TokenStream, Error> {
    let sig = &func.sig;
    if let Some(a) = &sig.asyncness {
        return Err(Error::new(
            a.span(),
            "a weir extractor cannot be async: plugins run synchronously",
        ));
    }
    if !sig.generics.params.is_empty() {
        return Err(Error::new(
            sig.generics.span(),
            "a weir extractor cannot be generic",
        ));
    }
    if sig.inputs.len() != 3 {
        return Err(Error::new(
            sig.inputs
                .span()
                .join(sig.ident.span())
                .unwrap_or(sig.ident.span()),
            format!(
                "{EXTRACTOR_SHAPE}: it takes 3 arguments, found {}",
                sig.inputs.len()
            ),
        ));
    }
    match &sig.output {
        ReturnType::Default => {
            return Err(Error::new(
                sig.ident.span(),
                format!("{EXTRACTOR_SHAPE}: it must return weir_sdk::Result<()>"),
            ));
        }
        ReturnType::Type(_, ty) if !last_segment_is(ty, "Result") => {
            return Err(Error::new(
                ty.span(),
                format!("{EXTRACTOR_SHAPE}: it must return weir_sdk::Result<()>"),
            ));
        }
        ReturnType::Type(..) => {}
    }
    let config = ref_inner(&sig.inputs[0], false, "first argument (the config)")?;
    let event = ref_inner(&sig.inputs[1], false, "second argument (the event)")?;
    if !last_segment_is(&event, "Event") {
        return Err(Error::new(
            event.span(),
            format!("{EXTRACTOR_SHAPE}: the event is a `&weir_sdk::Event<'_>`"),
        ));
    }
    let out = ref_inner(&sig.inputs[2], true, "third argument (the output row)")?;
    if !last_segment_is(&out, "Vec") {
        return Err(Error::new(
            out.span(),
            format!("{EXTRACTOR_SHAPE}: the output row is a `&mut Vec<f64>`"),
        ));
    }
    let name = &sig.ident;
    Ok(quote! {
        const _: () = {
            ::std::thread_local! {
                static __WEIR_CONFIG: ::std::cell::RefCell<::std::option::Option<#config>> =
                    const { ::std::cell::RefCell::new(::std::option::Option::None) };
            }
            struct __WeirExtractor;
            impl ::weir_sdk::bindings::extractor::exports::weir::operator::extractor::Guest for __WeirExtractor {
                fn init(config: ::std::string::String) -> ::std::result::Result<(), ::weir_sdk::__private::PluginError> {
                    let parsed: #config = ::weir_sdk::__private::parse_config(&config)?;
                    __WEIR_CONFIG.with(|c| *c.borrow_mut() = ::std::option::Option::Some(parsed));
                    ::std::result::Result::Ok(())
                }
                fn extract(
                    events: ::weir_sdk::__private::EventBatch,
                ) -> ::std::result::Result<::weir_sdk::__private::FeatureBatch, ::weir_sdk::__private::PluginError> {
                    __WEIR_CONFIG.with(|c| {
                        let guard = c.borrow();
                        let config = guard.as_ref().ok_or_else(::weir_sdk::__private::not_initialised)?;
                        ::weir_sdk::__private::run_extractor(&events, |event, out| #name(config, event, out))
                    })
                }
            }
            ::weir_sdk::bindings::extractor::__export_extractor!(__WeirExtractor);
        };
    })
}

fn check_impl(imp: &ItemImpl, trait_name: &str, macro_name: &str) -> Result<Type, Error> {
    let Some((_, path, _)) = &imp.trait_ else {
        return Err(Error::new(
            imp.self_ty.span(),
            format!(
                "#[weir_sdk::{macro_name}] goes on `impl weir_sdk::{trait_name} for YourType {{ … }}`"
            ),
        ));
    };
    if path.segments.last().map(|s| s.ident.to_string()) != Some(trait_name.to_string()) {
        return Err(Error::new(
            path.span(),
            format!(
                "#[weir_sdk::{macro_name}] goes on an impl of `weir_sdk::{trait_name}`, not `{}`",
                quote!(#path).to_string().replace(' ', "")
            ),
        ));
    }
    if !imp.generics.params.is_empty() {
        return Err(Error::new(
            imp.generics.span(),
            format!("a weir {macro_name} cannot be generic: the plugin needs one concrete type"),
        ));
    }
    for item in &imp.items {
        if let ImplItem::Fn(f) = item
            && let Some(a) = &f.sig.asyncness
        {
            return Err(Error::new(
                a.span(),
                format!("weir {macro_name} methods cannot be async: plugins run synchronously"),
            ));
        }
    }
    Ok((*imp.self_ty).clone())
}

fn parse_impl(
    attr: TokenStream,
    item: TokenStream,
    trait_name: &str,
    macro_name: &str,
) -> Result<(ItemImpl, Type), (proc_macro2::TokenStream, Error)> {
    let raw: proc_macro2::TokenStream = item.clone().into();
    if let Err(e) = no_args(attr, macro_name) {
        return Err((raw, e));
    }
    let parsed: Item = match syn::parse(item) {
        Ok(i) => i,
        Err(e) => return Err((raw, e)),
    };
    let Item::Impl(imp) = parsed else {
        return Err((
            raw,
            Error::new(
                Span::call_site(),
                format!(
                    "#[weir_sdk::{macro_name}] goes on `impl weir_sdk::{trait_name} for YourType {{ … }}`"
                ),
            ),
        ));
    };
    match check_impl(&imp, trait_name, macro_name) {
        Ok(ty) => Ok((imp, ty)),
        Err(e) => {
            // Emit the impl without `async`, so the error above is the only one reported.
            let mut imp = imp;
            for item in &mut imp.items {
                if let ImplItem::Fn(f) = item {
                    f.sig.asyncness = None;
                }
            }
            Err((quote!(#imp), e))
        }
    }
}

/// Turns `impl weir_sdk::Model for T { … }` into a model plugin.
#[proc_macro_attribute]
pub fn model(attr: TokenStream, item: TokenStream) -> TokenStream {
    let (imp, ty) = match parse_impl(attr, item, "Model", "model") {
        Ok(x) => x,
        Err((raw, e)) => {
            let err = e.to_compile_error();
            return quote!(#raw #err).into();
        }
    };
    quote! {
        #imp
        const _: () = {
            ::std::thread_local! {
                static __WEIR_MODEL: ::std::cell::RefCell<::std::option::Option<#ty>> =
                    const { ::std::cell::RefCell::new(::std::option::Option::None) };
            }
            type __E = ::weir_sdk::__private::PluginError;
            fn __with<R>(f: impl FnOnce(&mut #ty) -> ::std::result::Result<R, __E>) -> ::std::result::Result<R, __E> {
                __WEIR_MODEL.with(|m| match m.borrow_mut().as_mut() {
                    ::std::option::Option::Some(model) => f(model),
                    ::std::option::Option::None => ::std::result::Result::Err(::weir_sdk::__private::not_initialised()),
                })
            }
            struct __WeirModel;
            impl ::weir_sdk::bindings::model::exports::weir::operator::model::Guest for __WeirModel {
                fn init(config: ::std::string::String) -> ::std::result::Result<(), __E> {
                    let parsed = ::weir_sdk::__private::parse_config::<<#ty as ::weir_sdk::Model>::Config>(&config)?;
                    let model = <#ty as ::weir_sdk::Model>::new(parsed)?;
                    __WEIR_MODEL.with(|m| *m.borrow_mut() = ::std::option::Option::Some(model));
                    ::std::result::Result::Ok(())
                }
                fn predict(features: ::weir_sdk::__private::FeatureBatch) -> ::std::result::Result<::std::vec::Vec<f64>, __E> {
                    __with(|m| ::weir_sdk::__private::run_predict(m, &features))
                }
                fn train(features: ::weir_sdk::__private::FeatureBatch, labels: ::std::vec::Vec<f64>) -> ::std::result::Result<::std::vec::Vec<f64>, __E> {
                    __with(|m| ::weir_sdk::__private::run_train(m, &features, &labels))
                }
                fn snapshot() -> ::std::result::Result<::std::vec::Vec<u8>, __E> {
                    __with(|m| ::weir_sdk::Model::snapshot(m).map_err(::std::convert::Into::into))
                }
                fn restore(snapshot: ::std::vec::Vec<u8>) -> ::std::result::Result<(), __E> {
                    __with(|m| ::weir_sdk::Model::restore(m, &snapshot).map_err(::std::convert::Into::into))
                }
            }
            ::weir_sdk::bindings::model::__export_model!(__WeirModel);
        };
    }
    .into()
}

/// Turns `impl weir_sdk::Operator for T { … }` into an operator plugin.
#[proc_macro_attribute]
pub fn operator(attr: TokenStream, item: TokenStream) -> TokenStream {
    let (imp, ty) = match parse_impl(attr, item, "Operator", "operator") {
        Ok(x) => x,
        Err((raw, e)) => {
            let err = e.to_compile_error();
            return quote!(#raw #err).into();
        }
    };
    quote! {
        #imp
        const _: () = {
            use ::weir_sdk::bindings::operator::exports::weir::operator::operator as __wit;
            type __E = ::weir_sdk::__private::PluginError;
            struct __WeirGuest;
            struct __WeirInstance(::std::cell::RefCell<#ty>);
            impl __wit::Guest for __WeirGuest {
                type Instance = __WeirInstance;
            }
            impl __wit::GuestInstance for __WeirInstance {
                fn open(config: ::std::string::String) -> ::std::result::Result<__wit::Instance, __E> {
                    let parsed = ::weir_sdk::__private::parse_config::<<#ty as ::weir_sdk::Operator>::Config>(&config)?;
                    let op = <#ty as ::weir_sdk::Operator>::open(parsed)?;
                    ::std::result::Result::Ok(__wit::Instance::new(__WeirInstance(::std::cell::RefCell::new(op))))
                }
                fn process(&self, events: ::weir_sdk::__private::EventBatch) -> ::std::result::Result<::weir_sdk::__private::EventBatch, __E> {
                    ::weir_sdk::__private::run_process(&mut *self.0.borrow_mut(), &events)
                }
                fn on_window(&self, windows: ::weir_sdk::__private::WindowBatch) -> ::std::result::Result<::weir_sdk::__private::EventBatch, __E> {
                    ::weir_sdk::__private::run_on_window(&mut *self.0.borrow_mut(), &windows)
                }
            }
            ::weir_sdk::bindings::operator::__export_operator!(__WeirGuest);
        };
    }
    .into()
}
