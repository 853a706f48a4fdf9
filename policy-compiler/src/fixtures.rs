//! Test fixtures shared by the compiler's unit tests.

use crate::k8s::{build_model, parse_documents};
use crate::model::Model;

/// Namespaces x and y; pods a, b (in x) and c (in y) with named ports.
pub const BASE: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: x}
---
apiVersion: v1
kind: Namespace
metadata: {name: y}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {app: a}}
spec: {containers: [{ports: [{name: serve, containerPort: 80}]}]}
status: {podIP: 10.0.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: x, labels: {app: b}}
spec: {containers: [{ports: [{name: serve, containerPort: 81}, {name: dns, containerPort: 53, protocol: UDP}]}]}
status: {podIP: 10.0.0.2}
---
apiVersion: v1
kind: Pod
metadata: {name: c, namespace: y, labels: {app: c}}
spec: {containers: [{ports: [{name: serve, containerPort: 82}]}]}
status: {podIP: 10.0.1.3}
"#;

/// [`BASE`] with these further documents.
pub fn model(extra: &str) -> Model {
    let text = format!("{BASE}---\n{extra}");
    build_model(parse_documents("test.yaml", &text).expect("test YAML parses")).expect("test model is valid")
}
