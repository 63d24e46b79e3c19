//! The annotated function: attributes, visibility, signature and the body's inner attributes parsed
//! with syn; the rest of the body kept as tokens.
//!
//! The statements are not parsed: a half-typed body still expands, and rustc reports the user's
//! real error in it rather than a parse error from this macro.

use proc_macro2::{Delimiter, Group, TokenStream};
use quote::{ToTokens, TokenStreamExt as _};
use syn::parse::{Parse, ParseStream};
use syn::{Attribute, Signature, Token, Visibility, braced, token};

/// A function item, or a trait method declaration (`body` is `None` and `semi` holds the `;`).
pub(crate) struct GuardedFn {
    pub(crate) attrs: Vec<Attribute>,
    pub(crate) vis: Visibility,
    pub(crate) sig: Signature,
    pub(crate) body: Option<Body>,
    pub(crate) semi: Option<Token![;]>,
}

/// The function's block.
pub(crate) struct Body {
    /// Inner attributes (`#![allow(…)]`) at the top of the block; they stay on the function.
    pub(crate) inner_attrs: Vec<Attribute>,
    /// The block itself, braces included, without the inner attributes.
    pub(crate) block: Group,
}

impl Parse for GuardedFn {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let attrs = input.call(Attribute::parse_outer)?;
        let vis: Visibility = input.parse()?;
        let sig: Signature = input.parse()?;
        let (body, semi) = if input.peek(Token![;]) {
            (None, Some(input.parse()?))
        } else if input.peek(token::Brace) {
            let content;
            let brace = braced!(content in input);
            let inner_attrs = content.call(Attribute::parse_inner)?;
            let mut block = Group::new(Delimiter::Brace, content.parse::<TokenStream>()?);
            block.set_span(brace.span.join());
            (Some(Body { inner_attrs, block }), None)
        } else {
            return Err(input.error("expected the function's body `{ … }`"));
        };
        if !input.is_empty() {
            return Err(input.error("unexpected tokens after the function"));
        }
        Ok(GuardedFn {
            attrs,
            vis,
            sig,
            body,
            semi,
        })
    }
}

impl ToTokens for GuardedFn {
    /// Re-emits the function exactly as written.
    fn to_tokens(&self, tokens: &mut TokenStream) {
        tokens.append_all(&self.attrs);
        self.vis.to_tokens(tokens);
        self.sig.to_tokens(tokens);
        if let Some(body) = &self.body {
            let mut stream = TokenStream::new();
            stream.append_all(&body.inner_attrs);
            stream.extend(body.block.stream());
            let mut group = Group::new(Delimiter::Brace, stream);
            group.set_span(body.block.span());
            group.to_tokens(tokens);
        }
        self.semi.to_tokens(tokens);
    }
}
