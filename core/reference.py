"""References: one line that names where a secret is kept.

Grammar (docs/references.md)::

    reference = scheme ":" path [ "?" options ] [ "#" selector ]
    scheme    = lowercase letter *( lowercase letter / digit / "-" / "+" / "." )
    options   = key "=" value *( "&" key "=" value )      ; percent-encoded like a URL query
    selector  = json-pointer / key                         ; "#/db/password" or "#password"

``path`` is percent-decoded, so ``%23`` and ``%3F`` stand for a literal ``#`` and ``?``.
Percent-encoded bytes must be UTF-8. The reference text, its decoded path and its options
carry no control characters; only a selector may (a JSON key can hold anything), and it is
shown escaped in messages. ``str(parse_reference(s))`` parses back to an equal reference.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode

from credbridge.core.errors import BadReference, InvalidValue, NotFound
from credbridge.core.records import field, record
from credbridge.core.secret import (
    MAX_DEPTH,
    Secret,
    SecretDocument,
    TooDeep,
    leaf_to_secret,
    nesting_depth,
)
from credbridge.core.settings import control_problem

_SCHEME = re.compile(r"[a-z][a-z0-9+.-]*")
_DIGITS = re.compile(r"[0-9]+")
# Kept readable in a canonical selector; everything else (``%``, spaces, controls) is encoded.
_SELECTOR_SAFE = "/~:@=+,;!$&*()[]'"
TRUE_WORDS = frozenset({"1", "t", "true", "yes", "on"})
FALSE_WORDS = frozenset({"0", "f", "false", "no", "off"})


def parse_flag(text: str) -> bool | None:
    """A yes/no word in any case (``true``/``false``, ``yes``/``no``, ``on``/``off``,
    ``1``/``0``, ``t``/``f``: what Go's ``strconv.ParseBool`` and most tools accept), or
    ``None`` for anything else."""
    word = text.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    return None


@record(frozen=True, order=True, slots=True)
class Locator:
    """What a source fetches: scheme, path and options, without the selector."""

    scheme: str
    path: str
    options: tuple[tuple[str, str], ...] = ()

    def option(self, key: str, default: str | None = None) -> str | None:
        return dict(self.options).get(key, default)

    @property
    def option_map(self) -> dict[str, str]:
        return dict(self.options)

    def __str__(self) -> str:
        text = f"{self.scheme}:{quote(self.path, safe='/:@=+,;~!$&*()[]')}"
        if self.options:
            text += "?" + urlencode(self.options)
        return text


@record(frozen=True, order=True, slots=True)
class Reference:
    """A parsed reference. ``str(ref)`` gives back its canonical one-line form."""

    locator: Locator
    selector: str | None = None
    text: str = field(default="", compare=False)
    _canonical: str | None = field(default=None, init=False, repr=False, compare=False)
    _hash: int | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def scheme(self) -> str:
        return self.locator.scheme

    @property
    def path(self) -> str:
        return self.locator.path

    @property
    def options(self) -> dict[str, str]:
        return self.locator.option_map

    def option(self, key: str, default: str | None = None) -> str | None:
        return self.locator.option(key, default)

    def int_option(
        self, key: str, default: int, *, minimum: int = 0, maximum: int = 1 << 20
    ) -> int:
        raw = self.option(key)
        if raw is None:
            return default
        if not _DIGITS.fullmatch(raw) or len(raw) > 20:
            raise BadReference(
                str(self), f"option {key}={self.written_option(key, raw)!r} is not an integer"
            )
        value = int(raw, 10)
        if not minimum <= value <= maximum:
            raise BadReference(str(self), f"option {key}={value} is outside {minimum}..{maximum}")
        return value

    def flag_option(self, key: str, default: bool = False) -> bool:
        """Option ``key`` as a yes/no word (:func:`parse_flag`); absent or empty: ``default``."""
        raw = self.option(key)
        if not raw:
            return default
        value = parse_flag(raw)
        if value is None:
            raise BadReference(str(self), f"{key} must be true or false")
        return value

    def written_option(self, key: str, decoded: str) -> str:
        """Option ``key``'s value as the reference's text spells it, for messages: decoding
        turns ``+`` into a space and ``%XX`` into bytes, so ``?bytes=+32`` reads ``' 32'``."""
        query = self.text.partition("#")[0].partition("?")[2]
        for pair in query.split("&") if query else ():
            name, _, value = pair.partition("=")
            if unquote(name.replace("+", " ")) == key:
                return value
        return decoded

    def __hash__(self) -> int:
        # Computed once: one parsed reference is shared by the credentials that write it, and
        # a run hashes it again for each of their requests.
        value = self._hash
        if value is None:
            value = hash((self.locator, self.selector))
            object.__setattr__(self, "_hash", value)
        return value

    def __str__(self) -> str:
        # Rendered once: a run shows each reference several times (keys, messages, plans).
        text = self._canonical
        if text is None:
            text = str(self.locator)
            if self.selector is not None:
                text += "#" + quote(self.selector, safe=_SELECTOR_SAFE)
            if text == self.text:
                text = self.text  # the written text was canonical: keep one copy, not two
            object.__setattr__(self, "_canonical", text)
        return text

    def select(self, document: Secret | SecretDocument) -> Secret:
        """Apply this reference's selector to what the source fetched."""
        return select(document, self.selector, str(self))


def parse_reference(text: str) -> Reference:
    """Parse ``SCHEME:PATH[?OPTIONS][#SELECTOR]``; raises :class:`BadReference`."""
    if not isinstance(text, str) or not text.strip():
        raise BadReference(str(text), "empty reference")
    if text != text.strip() or "\n" in text:
        raise BadReference(text, "reference must be one line without surrounding spaces")
    problem = control_problem(text)
    if problem is not None:
        raise BadReference(text, f"reference {problem}; percent-encode such bytes")
    pasted = _pasted_aws_form(text)
    if pasted is not None:
        return pasted
    scheme, sep, rest = text.partition(":")
    if not sep:
        raise BadReference(text, "missing 'SCHEME:' prefix (e.g. 'file:/path')")
    if not _SCHEME.fullmatch(scheme):
        raise BadReference(text, f"invalid scheme {scheme!r} (lowercase letters, digits, '-+.')")
    rest, hash_sep, selector = rest.partition("#")
    path_part, _, query = rest.partition("?")
    path = _decode(path_part, text, "path")
    if not path:
        raise BadReference(text, "empty path")
    if path.startswith("//"):
        suffix = ("?" + query if query else "") + ("#" + selector if hash_sep else "")
        raise BadReference(text, _url_hint(scheme, path, suffix))
    problem = control_problem(path)
    if problem is not None:
        raise BadReference(text, f"path {problem}")
    options: list[tuple[str, str]] = []
    if query:
        try:
            pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True, errors="strict")
        except UnicodeDecodeError:
            raise BadReference(text, "percent-encoded bytes in the options are not UTF-8") from None
        except ValueError:
            raise BadReference(
                text, f"options {query!r} are not KEY=VALUE pairs joined by '&'"
            ) from None
        seen: set[str] = set()
        for key, value in pairs:
            if key in seen:
                raise BadReference(text, f"option {key!r} given twice")
            problem = control_problem(key + value)
            if problem is not None:
                raise BadReference(text, f"option {key!r} {problem}")
            seen.add(key)
            options.append((key, value))
    sel: str | None = None
    if hash_sep:
        if not selector:
            raise BadReference(text, "empty selector after '#'")
        sel = _decode(selector, text, "selector")
        if sel.startswith("/"):
            _split_pointer(sel, text)  # validate escapes now, not at fetch time
    if scheme == "aws-sm":
        path, sel = _ecs_secret_arn(text, path, options, sel)
    # Interned: thousands of credentials share a few schemes, paths and options.
    options = [(sys.intern(key), sys.intern(value)) for key, value in options]
    locator = Locator(sys.intern(scheme), sys.intern(path), tuple(sorted(options)))
    return Reference(locator, sel, text)


# --------------------------------------------------------------------------- pasted forms
# References are SCHEME:PATH, never URLs; and the forms AWS's own tools print (an ECS/Batch
# ``valueFrom``, a CloudFormation dynamic reference) are read as the aws-sm:/aws-ssm:
# reference they mean, so a user can paste them. docs/references.md, "What you would type
# elsewhere".

_SECRET_ARN_HEAD = re.compile(r"arn:[a-z-]+:secretsmanager:[a-z0-9-]*:[0-9]*:secret:")
_PARAMETER_ARN_HEAD = re.compile(r"arn:[a-z-]+:ssm:")
_CLOUDFORMATION = re.compile(r"\{\{resolve:(secretsmanager|ssm|ssm-secure):(.*)\}\}")


def _url_hint(scheme: str, path: str, suffix: str) -> str:
    """The message for ``SCHEME://...``: what to write instead (the URL form means nothing)."""
    rest = path[2:]
    if rest.startswith("/"):  # file:///etc/x is the URL of /etc/x
        return (
            f"'{scheme}://' is URL syntax, which references do not use: "
            f"write {scheme}:{rest}{suffix}"
        )
    return (
        f"'{scheme}://' is URL syntax, which references do not use: write {scheme}:{rest}{suffix} "
        f"(or {scheme}:/{rest}{suffix} for an absolute path); a server's address belongs in "
        "the source's settings, never in a reference"
    )


def _pasted_aws_form(text: str) -> Reference | None:
    """A bare ARN or a ``{{resolve:...}}`` as the aws-sm:/aws-ssm: reference it means.

    These are taken literally (no percent-decoding, no ``?options`` or ``#selector``), as the
    tools that print them do.
    """
    reference = _pasted_reference(text)
    if reference is None:
        return None
    # Through the grammar's own checks, so the canonical form parses back to the same.
    try:
        parsed = parse_reference(str(reference))
    except BadReference as error:
        raise BadReference(text, error.problem) from None
    return Reference(parsed.locator, parsed.selector, text)


def _pasted_reference(text: str) -> Reference | None:
    cloudformation = _CLOUDFORMATION.fullmatch(text)
    if cloudformation is not None:
        service, body = cloudformation.groups()
        if not body:
            raise BadReference(text, f"{{{{resolve:{service}:...}}}} names no secret")
        if service != "secretsmanager":
            # {{resolve:ssm:NAME:VERSION}} -> aws-ssm:NAME:VERSION (the same NAME:VERSION form).
            return Reference(Locator("aws-ssm", body), None, text)
        return _cloudformation_secret(text, body)
    if _SECRET_ARN_HEAD.match(text):
        options: list[tuple[str, str]] = []
        path, selector = _ecs_secret_arn(text, text, options, None)
        return Reference(Locator("aws-sm", path, tuple(sorted(options))), selector, text)
    if _PARAMETER_ARN_HEAD.match(text):
        return Reference(Locator("aws-ssm", text), None, text)
    return None


def _cloudformation_secret(text: str, body: str) -> Reference:
    """``secret-id:SecretString:json-key:version-stage:version-id``, trailing parts optional."""
    parts = body.split(":")
    # An ARN as the secret id keeps its own seven colon-separated parts.
    count = 7 if body.startswith("arn:") else 1
    secret_id, extra = ":".join(parts[:count]), parts[count:]
    if len(extra) > 4:
        raise BadReference(
            text,
            "expected {{resolve:secretsmanager:SECRET_ID:SecretString:JSON_KEY:"
            "VERSION_STAGE:VERSION_ID}}",
        )
    secret_string, key, stage, version_id = [*extra, "", "", "", ""][:4]
    if secret_string not in {"", "SecretString"}:
        raise BadReference(
            text, f"CloudFormation reads only 'SecretString' there, not {secret_string!r}"
        )
    options = _version_options(stage, version_id)
    return Reference(Locator("aws-sm", secret_id, options), _key_selector(key), text)


def _ecs_secret_arn(
    text: str, path: str, options: list[tuple[str, str]], selector: str | None
) -> tuple[str, str | None]:
    """``arn:...:secret:NAME:JSON_KEY:VERSION_STAGE:VERSION_ID`` (ECS, Batch): the ARN of
    the secret, with the JSON key as the selector and the version as options."""
    head = _SECRET_ARN_HEAD.match(path)
    if head is None:
        return path, selector
    name, *extra = path[head.end() :].split(":")
    if not extra:
        return path, selector
    if len(extra) > 3:
        raise BadReference(
            text, "expected arn:...:secret:NAME[:JSON_KEY[:VERSION_STAGE[:VERSION_ID]]]"
        )
    key, stage, version_id = [*extra, "", ""][:3]
    given = dict(options)
    for option, value in _version_options(stage, version_id):
        if option in given:
            raise BadReference(text, f"{option} is given both in the ARN and as ?{option}=")
        options.append((option, value))
    if key and selector is not None:
        raise BadReference(text, "the JSON key is given both in the ARN and as '#SELECTOR'")
    return path[: head.end()] + name, _key_selector(key) if key else selector


def _version_options(stage: str, version_id: str) -> tuple[tuple[str, str], ...]:
    options = []
    if stage:
        options.append(("version-stage", stage))
    if version_id:
        options.append(("version-id", version_id))
    return tuple(sorted(options))


def _key_selector(key: str) -> str | None:
    """A top-level JSON key as a selector; one that starts with '/' as a one-token pointer."""
    if not key:
        return None
    if key.startswith("/"):
        return "/" + key.replace("~", "~0").replace("/", "~1")
    return key


def _decode(part: str, reference: str, what: str) -> str:
    try:
        return unquote(part, errors="strict")
    except UnicodeDecodeError:
        raise BadReference(
            reference, f"percent-encoded bytes in the {what} are not UTF-8"
        ) from None


def _split_pointer(pointer: str, reference: str) -> list[str]:
    tokens = pointer.split("/")[1:]
    out = []
    for token in tokens:
        if re.search(r"~(?![01])", token):
            raise BadReference(reference, f"invalid JSON pointer escape in {pointer!r}")
        out.append(token.replace("~1", "/").replace("~0", "~"))
    return out


def select(document: Secret | SecretDocument, selector: str | None, reference: str) -> Secret:
    """Pick the value a selector names; it carries the document's :class:`Lease`.

    * no selector: a raw secret is returned whole; a structured one must have exactly one field;
    * ``/a/b/0``: an RFC 6901 JSON pointer;
    * ``key``: a top-level key.

    A raw secret is parsed as JSON when a selector is given.
    """
    value = _select(document, selector, reference)
    value.lease = document.lease
    return value


def _select(document: Secret | SecretDocument, selector: str | None, reference: str) -> Secret:
    if selector is None:
        if isinstance(document, Secret):
            return document
        data = document.reveal_data()
        if nesting_depth(data) > MAX_DEPTH:
            raise InvalidValue(reference, f"the secret is {TooDeep()}")
        if isinstance(data, Mapping):
            if len(data) == 1:
                return leaf_to_secret(next(iter(data.values())), as_written=document.as_written)
            fields = ", ".join(sorted(map(str, data)))
            raise InvalidValue(
                reference, f"secret has {len(data)} fields ({fields}); choose one with '#FIELD'"
            )
        return leaf_to_secret(data, as_written=document.as_written)
    if isinstance(document, Secret):
        try:
            document = SecretDocument.parse_json(document)  # the caller copies the lease over
        except TooDeep as error:
            raise InvalidValue(reference, f"the JSON value is {error}") from None
        except ValueError:
            raise InvalidValue(
                reference, f"selector #{selector} needs a JSON value, and this is not JSON"
            ) from None
    elif nesting_depth(document.reveal_data()) > MAX_DEPTH:
        # Documents parsed by a source (a server's answer, a sops file) are bounded here, once.
        raise InvalidValue(reference, f"the secret is {TooDeep()}")
    pointer = selector.startswith("/")
    tokens = _split_pointer(selector, reference) if pointer else [selector]
    # Messages show the selector as written: the pointer's escaped tokens up to the failing
    # one (``/a~1b``), or the key itself for ``#KEY`` (which is one key, slashes and all).
    written = selector.split("/")[1:] if pointer else [selector]
    node: Any = document.reveal_data()
    for depth, token in enumerate(tokens):
        walked = "/" + "/".join(written[: depth + 1]) if pointer else selector
        if isinstance(node, Mapping):
            if token not in node:
                hint = ""
                if not pointer and "/" in selector:
                    hint = f" (#{selector} names one top-level key; for a path write #/{selector})"
                raise NotFound(reference, f"no field {walked!r} in the secret{hint}")
            node = node[token]
        elif isinstance(node, list):
            if not re.fullmatch(r"0|[1-9][0-9]*", token) or int(token) >= len(node):
                raise NotFound(reference, f"no element {walked!r} in the secret")
            node = node[int(token)]
        else:
            raise NotFound(reference, f"{walked!r} descends into a scalar")
    return leaf_to_secret(node, as_written=document.as_written)
