//! [`PackageCatalog`]: the [`ToolCatalog`] over loaded tool packages and grants. It lists a
//! principal's granted tools, validates arguments against the tool's input schema before
//! anything runs, hands the call to a [`ToolRunner`], turns the tool's output into an MCP
//! result, and records every call in the call audit. Packages can be replaced at run time
//! ([`PackageCatalog::reload`]); subscribers learn of changes through [`ToolCatalog::changes`].

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use async_trait::async_trait;
use rmcp::model::{CallToolResult, ContentBlock, JsonObject, ResultType, Tool, ToolAnnotations};
use serde_json::Value;
use tokio::sync::watch;

use chiron_auth::Authenticated;
use chiron_core::time_util::now;
use chiron_runner::{CommandCall, CommandOutcome, RunnerError, StdioCall, ToolRunner};
use chiron_store::batch::BatchWriter;
use chiron_store::tool_calls::ToolCallRecord;
use chiron_store::Store;
use chiron_tools::{LoadReport, PackageKind, ToolDecl, ToolPackage};

use crate::catalog::{CatalogError, ToolCatalog};

/// One callable tool with everything a call needs, prepared at load time.
struct Prepared {
    package: Arc<ToolPackage>,
    decl: ToolDecl,
    tool: Tool,
    validator: Option<Arc<jsonschema::Validator>>,
}

#[derive(Default)]
struct Loaded {
    tools: HashMap<String, Arc<Prepared>>,
}

/// Removes secret values from what tools return before the MCP client sees it.
#[async_trait]
pub trait OutputScrubber: Send + Sync + 'static {
    /// `result` without any secret value of `principal`'s.
    async fn scrub(
        &self,
        principal: chiron_core::PrincipalId,
        result: CallToolResult,
    ) -> CallToolResult;
}

/// Tools from packages, filtered by grants, run by a [`ToolRunner`].
pub struct PackageCatalog {
    /// Scrubs secret values from results, when secrets exist.
    scrubber: std::sync::OnceLock<Arc<dyn OutputScrubber>>,
    store: Store,
    runner: Arc<dyn ToolRunner>,
    /// Replaced whole on reload; readers clone the `Arc` and never hold the lock across await.
    loaded: RwLock<Arc<Loaded>>,
    /// Bumped on every reload or grant change; MCP sessions watch it to send
    /// `notifications/tools/list_changed`.
    changes: watch::Sender<u64>,
    /// Each principal's granted packages, valid for the change generation they were read in:
    /// every grant or membership change this server makes or notices bumps the generation.
    granted: std::sync::Mutex<HashMap<chiron_core::PrincipalId, GrantedAt>>,
    /// Writes call audit rows in batches, off the call path.
    audit: BatchWriter<ToolCallRecord>,
}

/// Granted packages and the change generation they were read in.
type GrantedAt = (u64, Arc<Vec<String>>);

fn to_object(value: &Value) -> JsonObject {
    match value {
        Value::Object(map) => map.clone(),
        _ => JsonObject::new(),
    }
}

fn prepare(package: &Arc<ToolPackage>, decl: &ToolDecl) -> Prepared {
    let name = format!("{}_{}", package.name, decl.name);
    let mut tool = Tool::new(
        name,
        decl.description.clone(),
        Arc::new(to_object(&decl.input_schema)),
    );
    if let Some(output) = &decl.output_schema {
        tool.output_schema = Some(Arc::new(to_object(output)));
    }
    let hint = |key: &str| decl.annotations.get(key).and_then(Value::as_bool);
    let mut annotations = ToolAnnotations::new();
    if let Some(v) = hint("readOnlyHint") {
        annotations = annotations.read_only(v);
    }
    if let Some(v) = hint("destructiveHint") {
        annotations = annotations.destructive(v);
    }
    if let Some(v) = hint("idempotentHint") {
        annotations = annotations.idempotent(v);
    }
    if let Some(v) = hint("openWorldHint") {
        annotations = annotations.open_world(v);
    }
    if !decl.annotations.is_empty() {
        tool = tool.with_annotations(annotations);
    }
    let validator = match jsonschema::validator_for(&decl.input_schema) {
        Ok(validator) => Some(Arc::new(validator)),
        Err(err) => {
            tracing::warn!(tool = %tool.name, error = %err, "input schema does not compile; arguments are not validated");
            None
        }
    };
    Prepared {
        package: package.clone(),
        decl: decl.clone(),
        tool,
        validator,
    }
}

impl PackageCatalog {
    /// A catalog over `report`'s packages.
    pub fn new(store: Store, runner: Arc<dyn ToolRunner>, report: &LoadReport) -> Self {
        let catalog = Self {
            scrubber: std::sync::OnceLock::new(),
            audit: {
                let store = store.clone();
                BatchWriter::start("tool calls", move |rows| {
                    let store = store.clone();
                    async move { store.record_tool_calls(&rows).await }
                })
            },
            store,
            runner,
            loaded: RwLock::new(Arc::default()),
            changes: watch::channel(0).0,
            granted: std::sync::Mutex::default(),
        };
        catalog.reload(report);
        catalog
    }

    /// Scrubs every result (and `isError` text) with `scrubber` from now on (set once).
    pub fn set_scrubber(&self, scrubber: Arc<dyn OutputScrubber>) {
        let _ = self.scrubber.set(scrubber);
    }

    /// Replaces the packages with `report`'s and notifies subscribers.
    pub fn reload(&self, report: &LoadReport) {
        let mut loaded = Loaded::default();
        for package in report.packages.values() {
            // mcp-stdio packages carry the tools their server reported at discovery.
            let package = Arc::new(package.clone());
            for decl in &package.tools {
                let prepared = prepare(&package, decl);
                loaded
                    .tools
                    .insert(prepared.tool.name.to_string(), Arc::new(prepared));
            }
        }
        *self
            .loaded
            .write()
            .expect("invariant: catalog lock is never poisoned") = Arc::new(loaded);
        self.notify_changed();
    }

    fn bump(&self) {
        self.changes.send_modify(|version| *version += 1);
    }

    fn snapshot(&self) -> Arc<Loaded> {
        self.loaded
            .read()
            .expect("invariant: catalog lock is never poisoned")
            .clone()
    }

    /// The caller's granted packages: from the cache while no change was made or noticed
    /// since they were read (changes made elsewhere are noticed by the access watcher within
    /// `tools.access_poll_interval`), else from storage.
    async fn granted(&self, caller: &Authenticated) -> Result<Arc<Vec<String>>, CatalogError> {
        let principal = caller.principal.id;
        let generation = *self.changes.borrow();
        if let Some((seen, packages)) = self
            .granted
            .lock()
            .expect("invariant: grants cache lock")
            .get(&principal)
        {
            if *seen == generation {
                return Ok(packages.clone());
            }
        }
        let packages = Arc::new(
            self.store
                .granted_packages(principal)
                .await
                .map_err(|err| CatalogError::Unavailable(err.to_string()))?,
        );
        self.granted
            .lock()
            .expect("invariant: grants cache lock")
            .insert(principal, (generation, packages.clone()));
        Ok(packages)
    }

    async fn audit(&self, record: ToolCallRecord) {
        if !self.audit.write(record) {
            tracing::error!("the call audit writer is gone; a tool call was not recorded");
        }
    }

    /// Waits until every call recorded so far is in storage (shutdown, tests).
    pub async fn flush_audit(&self) {
        self.audit.flush().await;
    }
}

/// The declaration of a tool an `mcp-stdio` server reported, as the catalog keeps it.
pub fn decl_from_server_tool(tool: &Tool, timeout: std::time::Duration) -> ToolDecl {
    let mut annotations = std::collections::BTreeMap::new();
    if let Some(Value::Object(hints)) = tool
        .annotations
        .as_ref()
        .and_then(|a| serde_json::to_value(a).ok())
    {
        annotations.extend(hints);
    }
    ToolDecl {
        name: tool.name.to_string(),
        description: tool.description.as_deref().unwrap_or_default().to_owned(),
        input_schema: Value::Object((*tool.input_schema).clone()),
        output_schema: tool
            .output_schema
            .as_ref()
            .map(|schema| Value::Object((**schema).clone())),
        annotations,
        timeout,
        safe_to_log: false,
    }
}

impl PackageCatalog {
    /// Watches storage for grant and group changes made by any process (the CLI, another
    /// replica) and announces them to open sessions, until `shutdown`.
    pub fn spawn_access_watcher(
        self: &Arc<Self>,
        period: std::time::Duration,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let catalog = self.clone();
        tokio::spawn(async move {
            let mut last = catalog.store.access_revision().await.ok();
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = shutdown.cancelled() => break,
                }
                match catalog.store.access_revision().await {
                    Ok(revision) if last.as_ref() != Some(&revision) => {
                        if last.is_some() {
                            tracing::debug!("grants changed; announcing new tool lists");
                            catalog.notify_changed();
                        }
                        last = Some(revision);
                    }
                    Ok(_) => {}
                    Err(err) => tracing::warn!(error = %err, "could not check for grant changes"),
                }
            }
        })
    }
}

/// The first schema violations as `path: message` lines (the 2025-11-25 spec asks that the
/// failing path be named).
fn invalid_arguments(validator: &jsonschema::Validator, arguments: &Value) -> Option<String> {
    let problems: Vec<String> = validator
        .iter_errors(arguments)
        .take(5)
        .map(|err| {
            let path = err.instance_path().to_string();
            let path = if path.is_empty() {
                "/".to_owned()
            } else {
                path
            };
            format!("{path}: {err}")
        })
        .collect();
    (!problems.is_empty()).then(|| problems.join("\n"))
}

/// Turns a finished process into an MCP result: stdout holding a JSON object with `content` is
/// a full result; any other JSON object becomes text plus `structuredContent`; anything else
/// is one text block. A non-zero exit is `isError` with the stderr tail.
pub fn outcome_to_result(
    outcome: &CommandOutcome,
    timeout_secs: u64,
) -> (CallToolResult, &'static str) {
    if outcome.timed_out {
        let text = format!("tool timed out after {timeout_secs}s and was stopped");
        return (
            CallToolResult::error(vec![ContentBlock::text(text)]),
            "timeout",
        );
    }
    if outcome.exit_code != Some(0) {
        let status = outcome.exit_code.map_or_else(
            || "was killed".to_owned(),
            |c| format!("exited with status {c}"),
        );
        let mut text = format!("tool {status}");
        if !outcome.stderr_tail.trim().is_empty() {
            text.push_str(":\n");
            text.push_str(outcome.stderr_tail.trim_end());
        }
        return (
            CallToolResult::error(vec![ContentBlock::text(text)]),
            "tool_error",
        );
    }
    let stdout = String::from_utf8_lossy(&outcome.stdout);
    let result = match serde_json::from_str::<Value>(stdout.trim()) {
        Ok(Value::Object(object)) if object.contains_key("content") => {
            serde_json::from_value::<CallToolResult>(Value::Object(object)).unwrap_or_else(|_| {
                CallToolResult::success(vec![ContentBlock::text(stdout.to_string())])
            })
        }
        Ok(value @ Value::Object(_)) => CallToolResult::structured(value),
        _ => CallToolResult::success(vec![ContentBlock::text(stdout.to_string())]),
    };
    let outcome_label = if result.is_error == Some(true) {
        "tool_error"
    } else {
        "ok"
    };
    (result, outcome_label)
}

#[async_trait]
impl ToolCatalog for PackageCatalog {
    fn changes(&self) -> Option<watch::Receiver<u64>> {
        Some(self.changes.subscribe())
    }

    fn notify_changed(&self) {
        self.bump();
    }

    fn audit_dropped(&self) -> u64 {
        self.audit.dropped()
    }

    async fn list_tools(&self, caller: &Authenticated) -> Result<Vec<Tool>, CatalogError> {
        let granted = self.granted(caller).await?;
        let loaded = self.snapshot();
        let mut tools: Vec<Tool> = loaded
            .tools
            .values()
            .filter(|p| granted.iter().any(|g| *g == p.package.name))
            .map(|p| p.tool.clone())
            .collect();
        tools.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(tools)
    }

    async fn call_tool(
        &self,
        caller: &Authenticated,
        name: &str,
        arguments: Option<JsonObject>,
    ) -> Result<CallToolResult, CatalogError> {
        let started = Instant::now();
        let arguments = Value::Object(arguments.unwrap_or_default());
        let serialized = arguments.to_string();
        let mut record = ToolCallRecord {
            call_id: uuid::Uuid::now_v7().to_string(),
            at: now(),
            principal_id: caller.principal.id,
            token_id: caller.token.id,
            tool: name.to_owned(),
            package: String::new(),
            arg_keys: arguments
                .as_object()
                .map(|o| o.keys().cloned().collect())
                .unwrap_or_default(),
            arg_bytes: serialized.len() as i64,
            arg_values: None,
            outcome: "unknown_tool".into(),
            duration_ms: 0,
            runner_id: None,
        };

        let granted = self.granted(caller).await?;
        let prepared = self.snapshot().tools.get(name).cloned();
        let Some(prepared) = prepared.filter(|p| granted.iter().any(|g| *g == p.package.name))
        else {
            self.audit(record).await;
            return Err(CatalogError::UnknownTool);
        };
        record.package = prepared.package.name.clone();
        if prepared.decl.safe_to_log {
            record.arg_values = Some(serialized);
        }

        if let Some(problems) = prepared
            .validator
            .as_deref()
            .and_then(|v| invalid_arguments(v, &arguments))
        {
            record.outcome = "invalid_arguments".into();
            record.duration_ms = started.elapsed().as_millis() as i64;
            self.audit(record).await;
            let text = format!("invalid arguments for {name}:\n{problems}");
            return Ok(CallToolResult::error(vec![ContentBlock::text(text)]));
        }

        let timeout = prepared.decl.timeout;
        let ran = match prepared.package.kind {
            PackageKind::Command => {
                let call = CommandCall {
                    principal: caller.principal.id,
                    package: prepared.package.clone(),
                    tool: prepared.decl.name.clone(),
                    arguments,
                    timeout,
                    call_id: record.call_id.clone(),
                };
                self.runner.run_command(call).await.map(|outcome| {
                    let (result, label) = outcome_to_result(&outcome, timeout.as_secs());
                    (result, label, outcome.runner_id)
                })
            }
            PackageKind::McpStdio => {
                let call = StdioCall {
                    principal: caller.principal.id,
                    package: prepared.package.clone(),
                    tool: prepared.decl.name.clone(),
                    arguments: to_object(&arguments),
                    timeout,
                    call_id: record.call_id.clone(),
                };
                self.runner.call_stdio(call).await.map(|outcome| {
                    let (result, label) = match outcome.result {
                        Some(result) if result.is_error == Some(true) => (result, "tool_error"),
                        Some(result) => (result, "ok"),
                        None => (
                            CallToolResult::error(vec![ContentBlock::text(format!(
                                "tool timed out after {}s and its server was stopped",
                                timeout.as_secs()
                            ))]),
                            "timeout",
                        ),
                    };
                    (result, label, outcome.runner_id)
                })
            }
        };
        let result = match ran {
            Ok((result, label, runner_id)) => {
                record.runner_id = Some(runner_id);
                record.outcome = label.into();
                result
            }
            Err(err) => {
                record.outcome = if matches!(err, RunnerError::Busy) {
                    "busy"
                } else {
                    "runner_error"
                }
                .into();
                CallToolResult::error(vec![ContentBlock::text(err.to_string())])
            }
        };
        let mut result = match self.scrubber.get() {
            Some(scrubber) => scrubber.scrub(caller.principal.id, result).await,
            None => result,
        };
        // Results read from a tool (a stdio server of an older protocol, a command's stdout)
        // may lack `resultType`, which 2026-07-28 clients require; rmcp leaves it out again
        // for older ones.
        result.result_type.get_or_insert(ResultType::COMPLETE);
        record.duration_ms = started.elapsed().as_millis() as i64;
        self.audit(record).await;
        Ok(result)
    }
}
