"""The dependency graph of a compiled flow: the order its nodes start in, and the cycle that
makes a flow invalid, named as the path the file's references take."""

from tests.helpers import flow, problems


def test_a_cycle_is_named_by_the_path_its_references_take():
    assert problems("""
        id: f
        nodes:
          a: {type: template, template: "{b}"}
          b: {type: template, template: "{c}"}
          c: {type: template, template: "{a}"}
        outputs: {out-0: a}
    """) == [("nodes.a", "cycle: a -> b -> c -> a")]


def test_a_cycle_off_the_first_node_is_named_from_where_it_starts():
    assert problems("""
        id: f
        inputs: {in-0: {}}
        nodes:
          top: {type: template, template: "{in-0}{left}"}
          left: {type: template, template: "{right}"}
          right: {type: template, template: "{left}"}
        outputs: {out-0: top}
    """) == [("nodes.left", "cycle: left -> right -> left")]


def test_nodes_start_in_the_files_order_once_what_they_read_is_placed():
    text = """
        id: f
        inputs: {in-0: {}}
        nodes:
          summary: {type: template, template: "{draft} {facts}"}
          draft: {type: llm, provider: scripted, prompt: "{in-0}"}
          facts: {type: template, template: "{in-0}"}
          title: {type: template, template: "{summary}"}
          footer: {type: template, template: "-"}
        outputs: {out-0: title}
    """
    order = flow(text).order
    assert order == ("draft", "facts", "footer", "summary", "title")
    assert flow(text).order == order  # the file alone decides it
