//! The `#[multiproc::main]` attribute. Use it through the `multiproc` crate.

use proc_macro::{Delimiter, Group, TokenStream, TokenTree};

/// Calls `multiproc::init()` first thing in the annotated function. See
/// `multiproc::main` for the documentation.
#[proc_macro_attribute]
pub fn main(attr: TokenStream, item: TokenStream) -> TokenStream {
    if !attr.is_empty() {
        return error("#[multiproc::main] takes no arguments");
    }
    let mut tokens: Vec<TokenTree> = item.into_iter().collect();
    let is_fn = tokens.iter().any(|t| matches!(t, TokenTree::Ident(i) if i.to_string() == "fn"));
    match tokens.last_mut() {
        Some(TokenTree::Group(body)) if is_fn && body.delimiter() == Delimiter::Brace => {
            let mut stream: TokenStream = "::multiproc::init();".parse().expect("valid tokens");
            stream.extend(body.stream());
            let mut group = Group::new(Delimiter::Brace, stream);
            group.set_span(body.span());
            *body = group;
            tokens.into_iter().collect()
        }
        _ => error("#[multiproc::main] goes on a function with a body"),
    }
}

fn error(message: &str) -> TokenStream {
    format!("::core::compile_error!({message:?});").parse().expect("valid tokens")
}
