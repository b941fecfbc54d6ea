//! The dashboard: a single-page app of plain ES modules (no build step, no Node toolchain),
//! embedded in the binary. The server sends [`index_html`] for every page of the app and
//! the files under `/app/{BUILD}/…`, where [`BUILD`] is a hash of all of them: a file's
//! address changes whenever any file does, so browsers may keep them for a year.

include!(concat!(env!("OUT_DIR"), "/assets.rs"));

/// One embedded file.
#[derive(Debug, Clone, Copy)]
pub struct Asset {
    pub bytes: &'static [u8],
    pub content_type: &'static str,
}

/// The file at `name` (relative to `assets/`, e.g. `board.js`).
pub fn asset(name: &str) -> Option<Asset> {
    FILES
        .iter()
        .find(|(candidate, _)| *candidate == name)
        .map(|(name, bytes)| Asset {
            bytes,
            content_type: content_type(name),
        })
}

/// Every embedded file's name.
pub fn names() -> impl Iterator<Item = &'static str> {
    FILES.iter().map(|(name, _)| *name)
}

/// The dashboard's own modules: what a page of the app loads (not `/docs`' files).
pub fn app_modules() -> impl Iterator<Item = &'static str> {
    names().filter(|n| n.ends_with(".js") && !n.starts_with("vendor/") && *n != "docs.js")
}

/// The page every route of the app answers with: it loads the modules of this build.
pub fn index_html() -> String {
    page("index.html")
}

/// `/docs`: Swagger UI (vendored under `vendor/swagger-ui/`) over `/openapi.json`.
pub fn docs_html() -> String {
    page("docs.html")
}

/// A page template with this build's address for `{{BUILD}}`.
fn page(name: &str) -> String {
    let template = asset(name).map_or("", |a| std::str::from_utf8(a.bytes).unwrap_or(""));
    template.replace("{{BUILD}}", BUILD)
}

/// Whether `name` is one of the app's pages (sent by the page routes, not under `/app/`).
pub fn is_page(name: &str) -> bool {
    name.ends_with(".html")
}

fn content_type(name: &str) -> &'static str {
    match name.rsplit_once('.').map(|(_, extension)| extension) {
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("html") => "text/html; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("json") => "application/json",
        Some("txt") | Some("md") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_the_modules_of_this_build() {
        let page = index_html();
        assert!(page.contains(&format!("/app/{BUILD}/main.js")), "{page}");
        assert!(!page.contains("{{BUILD}}"));
    }

    #[test]
    fn the_docs_page_loads_the_vendored_swagger_ui_of_this_build() {
        let page = docs_html();
        for file in [
            "vendor/swagger-ui/swagger-ui-bundle.js",
            "vendor/swagger-ui/swagger-ui.css",
            "docs.js",
        ] {
            assert!(page.contains(&format!("/app/{BUILD}/{file}")), "{page}");
            assert!(asset(file).is_some(), "{file}");
        }
        assert!(!page.contains("https://"), "nothing from elsewhere: {page}");
    }

    #[test]
    fn every_module_the_app_imports_is_embedded() {
        let import = regex_free_imports();
        for (module, imported) in import {
            assert!(
                asset(&imported).is_some(),
                "{module} imports {imported}, which is missing"
            );
        }
    }

    /// `(module, imported file)` for every relative `import … from "./x.js"` of every module.
    fn regex_free_imports() -> Vec<(String, String)> {
        let mut found = Vec::new();
        for name in app_modules() {
            let text = std::str::from_utf8(asset(name).map_or(&[][..], |a| a.bytes)).unwrap_or("");
            for line in text.lines() {
                let line = line.trim();
                if !(line.starts_with("import ") || line.starts_with("} from ")) {
                    continue;
                }
                if let Some(start) = line.find("\"./") {
                    let rest = &line[start + 3..];
                    if let Some(end) = rest.find('"') {
                        found.push((name.to_string(), rest[..end].to_string()));
                    }
                }
            }
        }
        assert!(!found.is_empty(), "the modules import one another");
        found
    }

    #[test]
    fn files_are_sent_with_their_type() {
        assert_eq!(content_type("a.js"), "text/javascript; charset=utf-8");
        assert_eq!(content_type("vendor/LICENSE"), "application/octet-stream");
        assert!(asset("no-such-file.js").is_none());
    }
}
