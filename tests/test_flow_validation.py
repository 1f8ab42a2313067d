"""Validation happens when a flow is loaded or published, and names node and field."""

import pytest

from flowserve.errors import InputError
from tests.helpers import flow, problems


def test_a_valid_flow_compiles_in_dependency_order():
    f = flow("""
        id: ok
        inputs: {in-0: {}}
        nodes:
          b: {type: template, template: "{a}!"}
          a: {type: llm, provider: scripted, prompt: "{in-0}"}
        outputs: {out-0: b}
    """)
    assert f.order.index("a") < f.order.index("b")
    assert f.nodes["b"].deps == ("a",)


def test_unknown_reference_names_node_and_field():
    assert problems("""
        id: f
        nodes:
          llm-0: {type: llm, provider: scripted, prompt: "{in-7}"}
        outputs: {out-0: llm-0}
    """) == [("nodes.llm-0.prompt", "unknown reference {in-7}")]


def test_cycle_is_reported_with_its_path():
    found = problems("""
        id: f
        nodes:
          a: {type: template, template: "{b}"}
          b: {type: template, template: "{c}"}
          c: {type: template, template: "{a}"}
        outputs: {out-0: a}
    """)
    assert len(found) == 1
    loc, msg = found[0]
    assert loc.startswith("nodes.")
    assert msg.startswith("cycle: ") and msg.count("->") == 3


def test_self_reference():
    assert problems("""
        id: f
        nodes: {a: {type: template, template: "x{a}"}}
        outputs: {out-0: a}
    """) == [("nodes.a.template", "a node cannot reference itself")]


def test_duplicate_id_between_input_and_node():
    assert problems("""
        id: f
        inputs: {x: {}}
        nodes: {x: {type: template, template: "hi"}}
        outputs: {out-0: x}
    """) == [("nodes.x", "duplicate id 'x': already an input")]


def test_duplicate_key_in_the_file():
    found = problems("""
        id: f
        nodes:
          a: {type: template, template: "1"}
          a: {type: template, template: "2"}
        outputs: {out-0: a}
    """)
    assert found[0][0] == "a" and "duplicate id 'a'" in found[0][1]


def test_unknown_provider():
    found = problems("""
        id: f
        nodes: {a: {type: llm, provider: nope, prompt: "hi"}}
        outputs: {out-0: a}
    """)
    assert found[0][0] == "nodes.a.provider" and "unknown provider 'nope'" in found[0][1]


def test_unknown_model():
    found = problems("""
        id: f
        nodes: {a: {type: llm, provider: local, model: "no-such-model", prompt: "hi"}}
        outputs: {out-0: a}
    """)
    assert found[0][0] == "nodes.a.model" and "unknown local model" in found[0][1]


def test_output_pointing_nowhere():
    assert problems("""
        id: f
        nodes: {a: {type: template, template: "hi"}}
        outputs: {out-0: a, out-1: zzz}
    """) == [("outputs.out-1", "points to unknown node or input 'zzz'")]


def test_bad_option_value():
    [(loc, msg)] = problems("""
        id: f
        nodes: {a: {type: llm, provider: local, prompt: "hi", temperature: 9}}
        outputs: {out-0: a}
    """)
    assert loc == "nodes.a.temperature" and "less than or equal to 2" in msg


def test_unknown_field():
    assert problems("""
        id: f
        nodes: {b: {type: llm, provider: local, prompt: "hi", colour: blue}}
        outputs: {out-0: b}
    """) == [("nodes.b.colour", "Extra inputs are not permitted")]


def test_option_the_provider_does_not_support():
    found = problems("""
        id: f
        nodes: {a: {type: llm, provider: scripted, prompt: "hi", top_p: 0.5}}
        outputs: {out-0: a}
    """)
    assert found == [("nodes.a.top_p", "option not supported by provider 'scripted'")]


def test_not_yaml_and_not_a_mapping():
    assert problems("id: [unclosed")[0][0].startswith("line")
    assert problems("- a list")[0] == (
        "file",
        "a flow file must be a mapping with id, nodes, outputs",
    )


def test_inputs_take_defaults_and_required_ones_are_enforced():
    f = flow("""
        id: f
        inputs: {in-0: {}, in-1: {default: "friendly"}}
        nodes: {a: {type: template, template: "{in-0} {in-1}"}}
        outputs: {out-0: a}
    """)
    assert f.resolve_inputs({"in-0": "q"}) == {"in-0": "q", "in-1": "friendly"}
    with pytest.raises(InputError) as missing:
        f.resolve_inputs({})
    assert missing.value.loc == ("body", "in-0")
    with pytest.raises(InputError) as unknown:
        f.resolve_inputs({"in-0": "q", "in-5": "x"})
    assert unknown.value.loc == ("body", "in-5")
    with pytest.raises(InputError) as wrong_type:
        f.resolve_inputs({"in-0": 3})
    assert "must be a string" in wrong_type.value.message


def test_a_flow_file_cannot_send_server_keys_to_a_host_of_its_choosing():
    found = dict(
        problems("""
        id: f
        nodes:
          a: {type: llm, provider: openai, base_url: "https://attacker.example/v1", prompt: "x"}
          b: {type: llm, provider: openai, api_key_env: DATABASE_URL, prompt: "x"}
          c: {type: llm, provider: openai, base_url: "http://127.0.0.1.attacker.example/v1",
              prompt: "x"}
        outputs: {out-0: a, out-1: b, out-2: c}
    """)
    )
    assert "not allowed" in found["nodes.a.base_url"]
    assert "not allowed" in found["nodes.b.api_key_env"]
    assert "not allowed" in found["nodes.c.base_url"]
    ok = flow(
        """
        id: f
        nodes:
          a: {type: llm, provider: openai-compatible, base_url: "http://127.0.0.1:11434/v1",
              api_key_env: OLLAMA_API_KEY, model: llama3, prompt: "x"}
        outputs: {out-0: a}
        """,
        environ={"OLLAMA_API_KEY": "k"},
    )
    assert ok.warnings == ()
