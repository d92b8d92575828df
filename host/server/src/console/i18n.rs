//! The console's words, in Fluent: `locales/<language>.ftl`, compiled into the
//! binary. A template asks for a message by id; nothing shown to a person is put
//! together from pieces in code.

use std::sync::OnceLock;

use fluent_bundle::concurrent::FluentBundle;
use fluent_bundle::{FluentArgs, FluentResource, FluentValue};
use posup_proto::api::Language;

const SOURCES: [(Language, &str); 2] = [
    (Language::En, include_str!("../../locales/en.ftl")),
    (Language::Ru, include_str!("../../locales/ru.ftl")),
];

type Bundle = FluentBundle<FluentResource>;

fn bundle(language: Language, source: &str) -> Bundle {
    let tag = language
        .as_str()
        .parse()
        .expect("every Language is a valid language tag");
    let mut bundle = FluentBundle::new_concurrent(vec![tag]);
    // Isolation marks around arguments are for mixed-direction text; both languages
    // are left-to-right, and the marks would show up in copied text.
    bundle.set_use_isolating(false);
    let resource = FluentResource::try_new(source.to_owned())
        .unwrap_or_else(|(_, errors)| panic!("locales/{}.ftl: {errors:?}", language.as_str()));
    bundle
        .add_resource(resource)
        .unwrap_or_else(|errors| panic!("locales/{}.ftl: {errors:?}", language.as_str()));
    bundle
}

fn bundles() -> &'static [(Language, Bundle)] {
    static BUNDLES: OnceLock<Vec<(Language, Bundle)>> = OnceLock::new();
    BUNDLES.get_or_init(|| {
        SOURCES
            .iter()
            .map(|(language, source)| (*language, bundle(*language, source)))
            .collect()
    })
}

/// A number of things, however many references a template puts around it.
pub trait Count {
    fn count(&self) -> u64;
}

impl Count for u64 {
    fn count(&self) -> u64 {
        *self
    }
}

impl<T: Count + ?Sized> Count for &T {
    fn count(&self) -> u64 {
        (**self).count()
    }
}

/// The messages of one language.
#[derive(Clone, Copy)]
pub struct Tr {
    pub language: Language,
    bundle: &'static Bundle,
}

impl std::fmt::Debug for Tr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tr")
            .field("language", &self.language)
            .finish()
    }
}

impl Tr {
    pub fn new(language: Language) -> Tr {
        let bundle = bundles()
            .iter()
            .find(|(l, _)| *l == language)
            .map(|(_, b)| b)
            .expect("every Language has a locale file");
        Tr { language, bundle }
    }

    /// The message `id`.
    pub fn t(&self, id: &str) -> String {
        self.format(id, None)
    }

    /// The message `id` with one argument.
    pub fn t1(&self, id: &str, name: &str, value: impl std::fmt::Display) -> String {
        let mut args = FluentArgs::new();
        args.set(name, FluentValue::from(value.to_string()));
        self.format(id, Some(&args))
    }

    /// The message `id` with a count, so plural forms are chosen by it.
    pub fn n(&self, id: &str, count: impl Count) -> String {
        let mut args = FluentArgs::new();
        args.set("count", FluentValue::from(count.count()));
        self.format(id, Some(&args))
    }

    fn format(&self, id: &str, args: Option<&FluentArgs>) -> String {
        let Some(pattern) = self.bundle.get_message(id).and_then(|m| m.value()) else {
            // A missing id is a bug the locale test catches; the id itself is the
            // least bad thing to show.
            tracing::error!(id, language = self.language.as_str(), "no console message");
            return id.to_owned();
        };
        let mut errors = Vec::new();
        let text = self.bundle.format_pattern(pattern, args, &mut errors);
        if !errors.is_empty() {
            tracing::error!(id, ?errors, "console message formatting");
        }
        text.into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(source: &str) -> Vec<String> {
        source
            .lines()
            .filter(|l| !l.starts_with(['#', ' ', '\t']) && l.contains(" ="))
            .map(|l| l.split(" =").next().unwrap_or_default().trim().to_owned())
            .collect()
    }

    #[test]
    fn both_languages_have_the_same_messages() {
        let en = ids(SOURCES[0].1);
        let ru = ids(SOURCES[1].1);
        assert!(en.len() > 50, "{en:?}");
        let missing_ru: Vec<_> = en.iter().filter(|id| !ru.contains(id)).collect();
        let missing_en: Vec<_> = ru.iter().filter(|id| !en.contains(id)).collect();
        assert!(missing_ru.is_empty(), "not in ru.ftl: {missing_ru:?}");
        assert!(missing_en.is_empty(), "not in en.ftl: {missing_en:?}");
        // Every message formats without errors in both (this also parses them).
        for language in Language::ALL {
            let tr = Tr::new(language);
            for id in &en {
                assert!(tr.bundle.has_message(id), "{id} in {}", language.as_str());
                assert!(!tr.t(id).is_empty(), "{id} in {}", language.as_str());
            }
        }
    }

    /// Every message a template or handler asks for exists.
    #[test]
    fn every_message_used_exists() {
        let en = ids(SOURCES[0].1);
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut used = Vec::new();
        let mut files = Vec::new();
        for dir in ["templates", "src/console"] {
            for entry in std::fs::read_dir(root.join(dir)).unwrap() {
                files.push(entry.unwrap().path());
            }
        }
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            for call in [".t(\"", ".t1(\"", ".n(\""] {
                for (at, _) in text.match_indices(call) {
                    let rest = &text[at + call.len()..];
                    let id = &rest[..rest.find('"').unwrap()];
                    if id.chars().all(|c| c.is_ascii_lowercase() || c == '-') && !id.is_empty() {
                        used.push((file.display().to_string(), id.to_owned()));
                    }
                }
            }
        }
        assert!(used.len() > 50, "{used:?}");
        let unknown: Vec<_> = used.iter().filter(|(_, id)| !en.contains(id)).collect();
        assert!(
            unknown.is_empty(),
            "messages used but not defined: {unknown:?}"
        );
    }

    #[test]
    fn plural_forms_follow_the_language() {
        let ru = Tr::new(Language::Ru);
        assert_eq!(ru.n("devices-count", 1), "1 устройство");
        assert_eq!(ru.n("devices-count", 3), "3 устройства");
        assert_eq!(ru.n("devices-count", 11), "11 устройств");
        assert_eq!(Tr::new(Language::En).n("devices-count", 1), "1 device");
        assert_eq!(Tr::new(Language::En).n("devices-count", 2), "2 devices");
    }
}
