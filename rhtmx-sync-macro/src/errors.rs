//! Collecting several errors so that one expansion reports them all.

/// The errors found so far, combined into one [`syn::Error`].
#[derive(Default)]
pub(crate) struct Errors {
    /// The first error, with every later one combined into it.
    combined: Option<syn::Error>,
}

impl Errors {
    /// Records `error` after the ones already found.
    pub(crate) fn push(&mut self, error: syn::Error) {
        match &mut self.combined {
            Some(combined) => combined.combine(error),
            None => self.combined = Some(error),
        }
    }

    /// Every recorded error, with `error` last: for a problem that ends the checking.
    pub(crate) fn fail(self, error: syn::Error) -> syn::Error {
        match self.combined {
            Some(mut combined) => {
                combined.combine(error);
                combined
            }
            None => error,
        }
    }

    /// `Ok` if nothing was recorded, otherwise every recorded error.
    pub(crate) fn finish(self) -> syn::Result<()> {
        self.combined.map_or(Ok(()), Err)
    }
}
