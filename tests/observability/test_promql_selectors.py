"""The PromQL selector reader that the Prometheus checks rely on."""

import pytest

from obs_promql import metric_names, selectors, substitute


def strs(expr):
    return [str(s) for s in selectors(expr)]


def test_plain_and_labelled_selectors():
    assert strs('up') == ['up']
    assert strs('up{job=~".*tyk-dispatcher.*"} == 0') == ['up{job=~".*tyk-dispatcher.*"}']
    assert strs('a{x="1", y!="2",z!~"3"}') == ['a{x="1",y!="2",z!~"3"}']


def test_functions_aggregations_and_keyword_label_lists_are_not_metrics():
    expr = ('histogram_quantile(0.99, sum by (job, hook_type, le) '
            '(rate(tyk_dispatcher_dispatch_duration_seconds_bucket{job=~"$job"}[$__rate_interval]))) > 0.25')
    assert strs(expr) == ['tyk_dispatcher_dispatch_duration_seconds_bucket{job=~"$job"}']
    expr = 'sum without (instance) (rate(a_total[5m])) / on (job) group_left (version) max by (job, version) (b_info)'
    assert strs(expr) == ['a_total', 'b_info']
    expr = 'count_values("v", x) and on() (y or z) unless sum(w offset 5m) @ 100'
    assert metric_names(expr) == {'x', 'y', 'z', 'w'}
    assert metric_names('sum by(job)(rate(a[5m:1m])) * bool 2') == {'a'}


def test_aggregation_with_trailing_grouping():
    assert strs('sum(rate(a_total{k="v"}[5m])) by (job)') == ['a_total{k="v"}']


def test_strings_with_brackets_and_braces_stay_intact():
    sel = selectors('a{reason=~"[a-z]+{2}", b="x\\"y"}')
    assert len(sel) == 1
    assert sel[0].matcher('reason').value == '[a-z]+{2}'
    assert sel[0].matcher('b').value == 'x"y'


def test_bare_braces_and_name_matcher():
    sel = selectors('{__name__="foo", job="j"}')
    assert sel[0].name == 'foo' and str(sel[0]) == 'foo{job="j"}'
    sel = selectors('{__name__=~"foo.*"}')
    assert sel[0].name is None


def test_unknown_characters_are_errors():
    with pytest.raises(ValueError):
        selectors('a{job="x"} ; b')
    with pytest.raises(ValueError):
        selectors('a{job}')


def test_grafana_substitution():
    expr = 'rate(a{job=~"$job"}[$__rate_interval]) + b{job=~"${job}"}[$__interval] + c{x="[[job]]"}'
    assert substitute(expr, {'job': '.*'}) == 'rate(a{job=~".*"}[1m]) + b{job=~".*"}[15s] + c{x=".*"}'
    with pytest.raises(ValueError):
        substitute('a{job=~"$instance"}', {'job': '.*'})
