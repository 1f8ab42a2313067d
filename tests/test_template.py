from flowserve.flows.template import parse_template


def test_substitutes_placeholders():
    t = parse_template("Hello {in-0}, you are {in-1}.")
    assert t.names == ("in-0", "in-1")
    assert t.render({"in-0": "Ada", "in-1": "kind"}) == "Hello Ada, you are kind."


def test_value_containing_a_placeholder_is_not_re_expanded():
    t = parse_template("{in-0} / {in-1}")
    assert t.render({"in-0": "{in-1}", "in-1": "secret"}) == "{in-1} / secret"


def test_double_braces_are_literal_and_json_is_left_alone():
    t = parse_template('{{in-0}} {"a": 1} {in-0}')
    assert t.names == ("in-0",)
    assert t.render({"in-0": "x"}) == '{in-0} {"a": 1} x'


def test_no_attribute_access_or_format_specs():
    # Not placeholders at all: they stay literally in the text.
    t = parse_template("{in-0.__class__} {in-0:>99} {0}")
    assert t.names == ()
    assert t.render({}) == "{in-0.__class__} {in-0:>99} {0}"
