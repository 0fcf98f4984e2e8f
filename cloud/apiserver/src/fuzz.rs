//! Fuzz tests of what the API server reads from clients: bodies (JSON, YAML, protobuf), label
//! and field selectors, paths and queries, patches of every kind and managedFields. Each must
//! answer every input with a value or an error (which the API turns into a `Status`), never a
//! panic or a hang. See `wedge_testkit_fuzz` for how they run.

use std::collections::BTreeMap;

use serde_json::{Value, json};
use wedge_testkit_fuzz::Mutation;

use crate::api::patch::{PatchType, apply_patch};
use crate::api::request::{Query, parse_path};
use crate::protobuf::tests::{W, envelope};
use crate::registry::Registry;
use crate::selector::field::FieldSelector;
use crate::selector::label::LabelSelector;

const BODIES: &[&str] = &[
    r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"web","labels":{"app":"x"},"annotations":{"a":"b"}},"spec":{"containers":[{"name":"c","image":"i","ports":[{"containerPort":80}],"resources":{"limits":{"memory":"64Mi"}}}]}}"#,
    "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\n  labels: &l {app: x}\ndata:\n  k: |\n    line\n  n: \"1\"\nextra: *l\n",
    "- a: 1\n- b: [1, 2, {c: d}]\n",
    r#"[{"op":"add","path":"/metadata/labels/x","value":"y"},{"op":"copy","from":"/spec","path":"/metadata/annotations/s"},{"op":"move","from":"/metadata/labels","path":"/metadata/l2"},{"op":"test","path":"/kind","value":"Pod"},{"op":"remove","path":"/spec/containers/0"},{"op":"replace","path":"/spec/containers/-","value":{}}]"#,
    r#"{"metadata":{"labels":{"app":null}},"spec":{"containers":[{"name":"c","image":"j"},{"$patch":"delete","name":"d"}],"$setElementOrder/containers":[{"name":"c"}]}}"#,
];

#[test]
fn bodies_parse_or_are_refused() {
    for body in BODIES {
        assert!(crate::api::parse_body(body.as_bytes()).is_ok(), "{body}");
    }
    bolero::check!().with_type::<Mutation>().for_each(|m| {
        let body = m.apply_str(BODIES).into_bytes();
        let _ = crate::api::parse_body(&body);
    });
}

fn protobuf_seeds() -> Vec<Vec<u8>> {
    let time = W::default().int(1, 1_767_225_600).int(2, 0);
    let meta = W::default().str(1, "creds").str(3, "default").msg(8, time);
    let entry = W::default().str(1, "password").bytes(2, b"s3cret");
    let secret = W::default().msg(1, meta).msg(2, entry).str(3, "Opaque");
    let quantity = W::default().str(1, "64Mi");
    let limits = W::default().str(1, "memory").msg(2, quantity);
    let port = W::default().str(1, "http").int(3, 8080);
    let container = W::default()
        .str(1, "app")
        .str(2, "registry.local/app:1")
        .msg(6, port)
        .msg(8, W::default().msg(1, limits));
    let pod = W::default()
        .msg(1, W::default().str(1, "web"))
        .msg(2, W::default().msg(2, container));
    vec![
        envelope("v1", "Secret", secret),
        envelope("v1", "Pod", pod),
        envelope("v1", "DeleteOptions", W::default().int(1, 30)),
    ]
}

#[test]
fn protobuf_bodies_decode_or_are_refused() {
    let seeds = protobuf_seeds();
    for seed in &seeds {
        assert!(crate::protobuf::decode_object(seed).is_ok(), "{seed:?}");
    }
    let seeds: Vec<&[u8]> = seeds.iter().map(Vec::as_slice).collect();
    bolero::check!().with_type::<Mutation>().for_each(|m| {
        let _ = crate::protobuf::decode_object(&m.apply(&seeds));
    });
}

#[test]
fn selectors_paths_and_queries_parse_or_are_refused() {
    const TEXT: &[&str] = &[
        "app=x,tier!=db,env in (a,b),!gone,has,version notin (1)",
        "metadata.name=web,spec.nodeName!=edge-a,status.phase==Running",
        "/api/v1/namespaces/default/pods/web/log",
        "/apis/apps/v1/watch/namespaces/kube-system/deployments",
        "labelSelector=app%3Dx&limit=500&continue=eyJydiI6M30&watch=1&resourceVersion=0&command=sh&command=-c",
    ];
    let labels = BTreeMap::from([("app".to_owned(), "x".to_owned())]);
    let object = json!({"metadata": {"name": "web", "namespace": "default"}, "spec": {"nodeName": "edge-a"}});
    bolero::check!().with_type::<Mutation>().for_each(|m| {
        let text = m.apply_str(TEXT);
        if let Ok(selector) = LabelSelector::parse(&text) {
            let _ = selector.matches(&labels);
        }
        if let Ok(selector) = FieldSelector::parse(&text, &["spec.nodeName", "status.phase"]) {
            let _ = selector.matches(&object);
        }
        let _ = parse_path(&text);
        let query = Query::parse(Some(&text));
        let _ = query.all("command");
    });
}

#[test]
fn patches_of_every_kind_apply_or_are_refused() {
    let registry = Registry::builtin();
    let Some(pods) = registry.get("", "v1", "pods") else {
        panic!("pods are built in");
    };
    let Ok(original) = serde_json::from_str::<Value>(BODIES[0]) else {
        panic!("the seed pod is JSON");
    };
    bolero::check!()
        .with_type::<(Mutation, u8)>()
        .for_each(|(m, kind)| {
            let Ok(patch) = crate::api::parse_body(m.apply_str(BODIES).as_bytes()) else {
                return;
            };
            let kind =
                [PatchType::Json, PatchType::Merge, PatchType::Strategic][usize::from(*kind) % 3];
            if let Ok(patched) = apply_patch(&pods, kind, &original, &patch) {
                let fields = crate::api::managed::field_set(&patched, None, true);
                let again = crate::api::managed::from_fields_v1(
                    &crate::api::managed::to_fields_v1(&fields),
                );
                assert_eq!(again, fields);
            }
            // A client's managedFields entry is read back as given.
            let _ = crate::api::managed::from_fields_v1(&patch);
        });
}
