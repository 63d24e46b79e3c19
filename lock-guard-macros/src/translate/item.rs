//! The annotated function: attributes, visibility and signature parsed, the body kept as tokens.
//!
//! The body is not parsed: a half-typed body still expands, and rustc reports the user's real
//! error in it rather than a parse error from this macro.

use proc_macro2::{Delimiter, Group, TokenStream, TokenTree};
use quote::ToTokens;
use syn::parse::{Parse, ParseStream};
use syn::{Attribute, Signature, Token, Visibility};

/// A function item, or a trait method declaration (`body` is `None` and `semi` holds the `;`).
pub(crate) struct GuardedFn {
    pub(crate) attrs: Vec<Attribute>,
    pub(crate) vis: Visibility,
    pub(crate) sig: Signature,
    pub(crate) body: Option<Body>,
    pub(crate) semi: Option<Token![;]>,
}

/// The function's block, as tokens.
pub(crate) struct Body {
    /// Inner attributes (`#![allow(…)]`) at the top of the block; they stay on the function.
    pub(crate) inner_attrs: TokenStream,
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
        } else {
            match input.parse::<TokenTree>()? {
                TokenTree::Group(group) if group.delimiter() == Delimiter::Brace => {
                    (Some(Body::split(group)), None)
                }
                other => {
                    return Err(syn::Error::new(
                        other.span(),
                        "expected the function's body `{ … }`",
                    ));
                }
            }
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

impl Body {
    /// Moves the leading `#![…]` attributes out of the block.
    fn split(group: Group) -> Body {
        let tokens: Vec<TokenTree> = group.stream().into_iter().collect();
        let mut at = 0;
        while let [
            TokenTree::Punct(hash),
            TokenTree::Punct(bang),
            TokenTree::Group(attr),
            ..,
        ] = &tokens[at..]
        {
            if hash.as_char() == '#'
                && bang.as_char() == '!'
                && attr.delimiter() == Delimiter::Bracket
            {
                at += 3;
            } else {
                break;
            }
        }
        let inner_attrs = tokens[..at].iter().cloned().collect();
        let mut block = Group::new(Delimiter::Brace, tokens[at..].iter().cloned().collect());
        block.set_span(group.span());
        Body { inner_attrs, block }
    }
}

impl ToTokens for GuardedFn {
    /// Re-emits the function exactly as written.
    fn to_tokens(&self, tokens: &mut TokenStream) {
        for attr in &self.attrs {
            attr.to_tokens(tokens);
        }
        self.vis.to_tokens(tokens);
        self.sig.to_tokens(tokens);
        if let Some(body) = &self.body {
            let mut stream = body.inner_attrs.clone();
            stream.extend(body.block.stream());
            let mut group = Group::new(Delimiter::Brace, stream);
            group.set_span(body.block.span());
            group.to_tokens(tokens);
        }
        self.semi.to_tokens(tokens);
    }
}
