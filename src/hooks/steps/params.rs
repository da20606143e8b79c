//! Query-parameter steps, through `add_params`/`delete_params`: the gateway rebuilds the query
//! from the original one with those lists applied (a query written into `url` is reverted).

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{delete_entries, set_entries, settings};
use crate::{
    hooks::{
        cel::{ComputedMap, Input, Scope, TemplateSetting},
        config::StepConfig,
        parts::ObjectParts,
        step::{BuildError, Step, StepContext, StepError, StepOutcome},
    },
    pb,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ParamValues {
    params: BTreeMap<String, TemplateSetting>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ParamNames {
    names: Vec<String>,
}

/// `add_params`: `params = { name = "value" }` (replaces existing values).
#[derive(Debug)]
pub struct AddParams {
    params: ComputedMap,
}

impl AddParams {
    pub(super) fn build(config: &StepConfig, scope: Scope) -> Result<Self, BuildError> {
        let ParamValues { params } = settings(config)?;
        if params.is_empty() {
            return Err("needs at least one parameter".into());
        }
        Ok(Self {
            params: ComputedMap::build(params, scope, "params", str::to_string)?,
        })
    }
}

#[async_trait::async_trait]
impl Step for AddParams {
    fn parts(&self) -> ObjectParts {
        ObjectParts::REQUEST_PARAM_EDITS.union(self.params.variables().parts())
    }

    async fn run(
        &self,
        object: &mut pb::Object,
        cx: &StepContext,
    ) -> Result<StepOutcome, StepError> {
        let params = self
            .params
            .render(&Input::new(object, cx, self.params.variables()));
        let params = params.map_err(|err| StepError::new(err.to_string()))?;
        let request = object.request.get_or_insert_with(Default::default);
        set_entries(&mut request.add_params, &mut request.delete_params, &params);
        Ok(StepOutcome::Modified)
    }
}

/// `delete_params`: `names = ["debug"]`.
#[derive(Debug)]
pub struct DeleteParams {
    names: Vec<String>,
}

impl DeleteParams {
    pub(super) fn build(config: &StepConfig) -> Result<Self, BuildError> {
        let ParamNames { names } = settings(config)?;
        if names.is_empty() {
            return Err("needs at least one name".into());
        }
        Ok(Self { names })
    }
}

#[async_trait::async_trait]
impl Step for DeleteParams {
    fn parts(&self) -> ObjectParts {
        ObjectParts::REQUEST_PARAM_EDITS
    }

    async fn run(
        &self,
        object: &mut pb::Object,
        _cx: &StepContext,
    ) -> Result<StepOutcome, StepError> {
        let request = object.request.get_or_insert_with(Default::default);
        delete_entries(
            &mut request.add_params,
            &mut request.delete_params,
            &self.names,
        );
        Ok(StepOutcome::Modified)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hooks::steps::tests::{cx, run_step, scope, step_config};

    #[tokio::test]
    async fn params_are_added_and_deleted_through_the_lists() {
        let mut object = pb::Object::default();
        let add = AddParams::build(
            &step_config(
                "add_params",
                serde_json::json!({"params": {"version": "2"}}),
            ),
            scope(pb::HookType::Pre),
        )
        .unwrap();
        let delete = DeleteParams::build(&step_config(
            "delete_params",
            serde_json::json!({"names": ["debug"]}),
        ))
        .unwrap();
        run_step(&add, &mut object, &cx(pb::HookType::Pre)).await;
        run_step(&delete, &mut object, &cx(pb::HookType::Pre)).await;
        let request = object.request.unwrap();
        assert_eq!(
            request.add_params.get("version").map(String::as_str),
            Some("2")
        );
        assert_eq!(request.delete_params, vec!["debug".to_string()]);
    }
}
