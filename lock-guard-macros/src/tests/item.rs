use crate::translate::item::*;
use quote::ToTokens as _;
use quote::quote;

#[test]
fn keeps_a_half_typed_body() {
    let f: GuardedFn = syn::parse2(quote! {
        /// docs
        #[inline]
        pub async fn f(a: u32) -> Result<(), E> { let x = ; a. }
    })
    .unwrap();
    assert_eq!(f.attrs.len(), 2);
    assert!(f.body.is_some());
    assert_eq!(f.sig.ident, "f");
}

#[test]
fn splits_inner_attributes() {
    let f: GuardedFn = syn::parse2(quote! {
        async fn f() -> Result<(), E> { #![allow(unused)] #![deny(x)] Ok(()) }
    })
    .unwrap();
    let body = f.body.unwrap();
    let inner = &body.inner_attrs;
    assert_eq!(
        quote!(#(#inner)*).to_string(),
        quote!(#![allow(unused)] #![deny(x)]).to_string()
    );
    assert!(
        inner
            .iter()
            .all(|a| matches!(a.style, syn::AttrStyle::Inner(_)))
    );
    assert_eq!(body.block.stream().to_string(), quote!(Ok(())).to_string());
}

#[test]
fn declaration_without_body() {
    let f: GuardedFn = syn::parse2(quote!(
        async fn f(&self) -> Result<(), E>;
    ))
    .unwrap();
    assert!(f.body.is_none() && f.semi.is_some());
}

#[test]
fn round_trips() {
    let input = quote! {
        #[doc = "x"] pub(crate) async unsafe fn f<'a, T: Tr>(&'a self, t: T) -> Result<&'a T, E> where T: 'a { #![allow(x)] Ok(t) }
    };
    let f: GuardedFn = syn::parse2(input.clone()).unwrap();
    assert_eq!(f.to_token_stream().to_string(), input.to_string());
}

#[test]
fn inner_doc_comments_are_inner_attributes() {
    let f: GuardedFn = syn::parse2(quote! {
        async fn f() -> Result<(), E> { #![doc = "inner"] let x = ; }
    })
    .unwrap();
    let body = f.body.unwrap();
    assert!(body.inner_attrs[0].path().is_ident("doc"));
    assert_eq!(
        body.block.stream().to_string(),
        quote!(let x = ;).to_string()
    );
}

#[test]
fn a_missing_body_is_an_error() {
    let e = syn::parse2::<GuardedFn>(quote!(async fn f() -> Result<(), E> = 1))
        .err()
        .unwrap();
    assert!(
        e.to_string().contains("expected the function's body"),
        "{e}"
    );
}
