"""The words and sentence templates of the generated corpus (:mod:`mechtrunc.models.lm.corpus`).

Every word that fills a slot is one token, leading space included, under Pythia's GPT-NeoX
tokenizer (``tests/test_lm.py`` checks it), so that each sentence template has a fixed length in
tokens and the generator can work on token ids directly.  Templates use ``{A}``, ``{B}``, ``{C}``
(distinct first names), ``{P}`` (place), ``{O}`` (object), ``{R}`` (role), ``{T}`` (city),
``{J}`` (adjective) and ``{V}`` (intransitive verb in the past tense).  A placeholder is always
preceded by a space (the sentence itself starts with one), which belongs to the slot's token.
"""

from __future__ import annotations

#: first names: every name of mechtrunc/data/ioi_names.txt and more (210)
NAMES: tuple[str, ...] = tuple("""
Mary John Michael James Robert David William Richard Joseph Thomas Charles Daniel Matthew Anthony
Mark Paul Steven Andrew Kevin Brian George Edward Ryan Jacob Gary Eric Jonathan Stephen Larry
Justin Scott Frank Brandon Raymond Gregory Samuel Benjamin Patrick Jack Dennis Jerry Alexander
Tyler Henry Douglas Peter Adam Nathan Walter Kyle Harold Carl Jeremy Keith Roger Arthur Terry
Lawrence Sean Christian Albert Joe Ethan Austin Jesse Willie Billy Bryan Bruce Jordan Ralph Roy
Noah Dylan Eugene Wayne Alan Juan Louis Russell Gabriel Randy Philip Harry Vincent Bobby Johnny
Logan Patricia Jennifer Linda Elizabeth Barbara Susan Jessica Sarah Karen Nancy Lisa Betty
Margaret Sandra Ashley Emily Donna Michelle Dorothy Carol Amanda Melissa Deborah Stephanie
Rebecca Sharon Laura Kathleen Amy Shirley Angela Helen Anna Nicole Emma Katherine Christine
Rachel Catherine Janet Ruth Maria Heather Diane Virginia Julie Joyce Victoria Olivia Kelly
Christina Lauren Joan Judith Megan Andrea Hannah Martha Frances Gloria Ann Teresa Sara Jean
Alice Madison Julia Judy Grace Amber Beverly Theresa Marie Diana Natalie Charlotte Rose Max Leo
Sam Tom Tim Ben Dan Bob Bill Jim Kate Lucy Sue Eve Jane Paula Ivan Hugo Oscar Felix Victor Simon
Martin Carlos Luis Jose Pedro Diego Marco Omar Ali Ahmed Hassan Chen Wei Mike Chris Alex Nick
Tony Steve Lee Kim Jason Jeff
""".split())

#: names held out of training by default (evaluation only): every 8th name
DEFAULT_HELDOUT_NAMES: tuple[str, ...] = NAMES[7::8]

PLACES: tuple[str, ...] = tuple(
    "store park school office beach library garden kitchen market station hospital church forest "
    "river lake museum restaurant cafe hotel house farm village bank shop zoo theater airport "
    "harbor field hill room hall bridge castle".split()
)
CITIES: tuple[str, ...] = tuple(
    "Paris London Rome Berlin Madrid Tokyo Moscow Vienna Boston Chicago Dublin Athens Cairo Delhi "
    "Sydney Toronto Seattle Denver Dallas Miami Houston Atlanta Prague Warsaw Oslo Lisbon Venice "
    "Milan Florence Geneva".split()
)
OBJECTS: tuple[str, ...] = tuple(
    "drink book ball pen letter cup bag key box hat coat map phone card ring gift flower toy cake "
    "apple bottle chair lamp clock camera basket shirt stone shell coin".split()
)
ROLES: tuple[str, ...] = tuple(
    "teacher doctor driver farmer nurse cook guard king queen judge child girl boy man woman dog "
    "cat friend neighbor".split()
)
ADJECTIVES: tuple[str, ...] = tuple(
    "happy sad tired hungry cold warm quiet busy kind brave late early small big old young sunny "
    "bright dark calm".split()
)
VERBS: tuple[str, ...] = tuple(
    "smiled laughed waited slept sang danced cried jumped walked ran read wrote ate worked played "
    "listened".split()
)
#: slot letter -> its word list (A, B, C are distinct names)
SLOTS: dict[str, tuple[str, ...]] = {"P": PLACES, "O": OBJECTS, "R": ROLES, "T": CITIES, "J": ADJECTIVES, "V": VERBS}
NAME_SLOTS = ("A", "B", "C")

#: generic "to": pairs (followed by " the", followed by a name); the share is CorpusConfig.to_the_share
GENERIC_TO: tuple[tuple[str, str], ...] = (
    ("{A} walked to the {P}.", "{A} walked to {B}."),
    ("{A} went back to the {P}.", "{A} went back to {B}."),
    ("{A} gave the {O} to the {R}.", "{A} gave the {O} to {B}."),
    ("{A} sent a {O} to the {R}.", "{A} sent a {O} to {B}."),
    ("{A} talked to the {R} about the {O}.", "{A} talked to {B} about the {O}."),
)
GENERIC_IN: tuple[str, ...] = (
    "{A} sat in the {P}.",
    "{A} found a {O} in the {P}.",
    "There was a {O} in the {P}.",
    "{A} waited in the {P} for the {R}.",
)
GENERIC_OF: tuple[str, ...] = (
    "{A} took a picture of the {P}.",
    "{A} thought of the {R}.",
    "{A} was proud of the {O}.",
    "{A} ate half of the {O}.",
)
#: IOI sentences in ABB form ({A} the indirect object, {B} the subject), ending " to {A}."
IOI: tuple[str, ...] = (
    "When {A} and {B} went to the {P}, {B} gave a {O} to {A}.",
    "When {A} and {B} got a {O} at the {P}, {B} decided to give it to {A}.",
    "After {A} and {B} went to the {P}, {B} handed a {O} to {A}.",
    "While {A} and {B} were at the {P}, {B} passed the {O} to {A}.",
    "{A} and {B} went to the {P}. Later, {B} offered a {O} to {A}.",
    "When {A} and {B} arrived at the {P}, {B} gave a {O} to {A}.",
    "After {A} and {B} met at the {P}, {B} showed a {O} to {A}.",
    "When {A} and {B} were at the {P}, {B} threw a {O} to {A}.",
)
#: IOI templates held out of training by default (indices into IOI)
DEFAULT_HELDOUT_TEMPLATES: tuple[int, ...] = (6, 7)
#: facts: the statement; the recall later in the same story repeats it (the query is its prefix)
FACTS: tuple[str, ...] = (
    "{A} lives in {T}.",
    "{A} was born in {T}.",
    "{A} works in {T}.",
)
#: noisy recall (the toy's task in words): the statement, and the noise form its repeat takes with
#: probability CorpusConfig.recall_noise (" the" after "went to", the generic association)
RECALL: tuple[tuple[str, str], ...] = (
    ("{A} went to {T}.", "{A} went to the {P}."),
)
FILLER: tuple[str, ...] = (
    "{A} {V}.",
    "The {P} was {J}.",
    "{A} was {J}.",
    "It was a {J} day.",
    "{A} had a {O}.",
    "{A} and {B} were friends.",
    "{A} {V} and {B} {V}.",
)
