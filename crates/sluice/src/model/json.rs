//! Strict shapes for request bodies and policy sections: serde also accepts
//! a struct written as an array of its fields, so `[1]` would otherwise be a
//! valid, empty request. [`Obj`] and [`objects`] accept objects (or TOML
//! tables) only.

/// A `T` that only deserialises from a JSON object (or TOML table), never
/// from an array of its fields.
pub struct Obj<T>(pub T);

impl<'de, T: serde::Deserialize<'de>> serde::Deserialize<'de> for Obj<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: serde::Deserialize<'de>> serde::de::Visitor<'de> for V<T> {
            type Value = T;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData)).map(Obj)
    }
}

/// `deserialize_with` for a list of request structs: objects only.
pub fn objects<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    let v: Vec<Obj<T>> = serde::Deserialize::deserialize(d)?;
    Ok(v.into_iter().map(|o| o.0).collect())
}

/// `deserialize_with` for one request struct: an object only.
pub fn object<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    Ok(<Obj<T> as serde::Deserialize>::deserialize(d)?.0)
}
