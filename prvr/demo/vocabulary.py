"""The demo world's vocabulary: who (subjects), does what (actions) with what (objects), where (places).

Every entry carries two disjoint sets of wordings: the ``caption`` side, used for the sentence that describes an event
on the video side (annotator A), and the ``query`` side, used for the sentence a searcher types (annotator B). Verb
phrases are (third person, -ing form) pairs with ``{o}`` where the object goes; actions without objects leave it out.

The lists are ours, written for the demo: everyday scenes (dogs, beaches, kitchens, guitars, bikes, snow, ...) so that
free English queries typed at ``prvr query`` land near something the corpus holds.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Subject", "Thing", "Place", "Action", "SUBJECTS", "THINGS", "PLACES", "ACTIONS"]

VerbForms = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Subject:
    """A person. ``caption`` / ``query``: noun phrases with article ("a man" / "a guy")."""

    key: str
    caption: tuple[str, ...]
    query: tuple[str, ...]


@dataclass(frozen=True)
class Thing:
    """An object of an action. ``places``: where it can appear (empty = wherever its action can)."""

    key: str
    caption: tuple[str, ...]
    query: tuple[str, ...]
    places: tuple[str, ...] = ()


@dataclass(frozen=True)
class Place:
    """A setting. ``caption`` / ``query``: prepositional phrases ("on the beach" / "by the sea"); ``idle``: what the
    camera shows when no event happens there (the gaps between events)."""

    key: str
    caption: tuple[str, ...]
    query: tuple[str, ...]
    idle: tuple[str, ...]


@dataclass(frozen=True)
class Action:
    """An activity: verb phrases per side, the objects it takes, the places it happens and its usual length (s)."""

    key: str
    caption: VerbForms
    query: VerbForms
    things: tuple[str, ...]
    places: tuple[str, ...]
    seconds: tuple[float, float]


SUBJECTS: tuple[Subject, ...] = (
    Subject("man", ("a man", "a tall man", "a bearded man"), ("a guy", "a gentleman", "someone", "a person")),
    Subject("woman", ("a woman", "a woman in a red jacket", "a dark-haired woman"),
            ("a lady", "someone", "a person", "a female adult")),
    Subject("boy", ("a boy", "a little boy"), ("a kid", "a young child", "a small child")),
    Subject("girl", ("a girl", "a little girl"), ("a young girl", "a child", "a kid")),
    Subject("old_man", ("an old man", "an elderly man"), ("a grandfather", "a senior man", "an older gentleman")),
    Subject("old_woman", ("an old woman", "an elderly woman"), ("a grandmother", "an older lady", "a senior woman")),
    Subject("teenager", ("a teenager", "a teenage boy"), ("a teen", "a young person", "an adolescent")),
    Subject("young_woman", ("a young woman", "a student"), ("a college girl", "a young lady")),
    Subject("athlete", ("an athlete", "a sporty man"), ("a sportsman", "a fit young man")),
    Subject("father", ("a father", "a middle-aged man"), ("a dad", "a parent")),
)

THINGS: tuple[Thing, ...] = (
    Thing("dog", ("a dog", "a brown dog", "a small dog"), ("a puppy", "a pet dog", "a pooch")),
    Thing("cat", ("a cat", "a grey cat"), ("a kitten", "a pet cat")),
    Thing("horse", ("a horse", "a white horse"), ("a pony", "a mare")),
    Thing("guitar", ("a guitar", "an acoustic guitar"), ("an electric guitar", "a six-string guitar", "the guitar")),
    Thing("violin", ("a violin",), ("a fiddle", "the violin")),
    Thing("drums", ("the drums", "a drum kit"), ("a set of drums", "some drums")),
    Thing("piano", ("a piano", "an upright piano"), ("the keys of a piano", "a keyboard"),
          ("stage", "living_room")),
    Thing("pasta", ("pasta", "spaghetti"), ("noodles", "a plate of pasta")),
    Thing("eggs", ("eggs", "scrambled eggs"), ("an omelette", "some eggs")),
    Thing("soup", ("a pot of soup", "vegetable soup"), ("a stew", "some broth")),
    Thing("pancakes", ("pancakes",), ("crepes", "a stack of pancakes")),
    Thing("burgers", ("burgers", "hamburgers"), ("patties on a grill", "some burgers"), ("backyard",)),
    Thing("vegetables", ("vegetables", "carrots"), ("veggies", "some peppers and onions")),
    Thing("onions", ("onions", "an onion"), ("shallots", "a red onion")),
    Thing("bread", ("bread", "a loaf of bread"), ("a baguette", "some bread")),
    Thing("dishes", ("the dishes", "dirty plates"), ("the plates", "pots and pans"), ("kitchen", "cafe")),
    Thing("car", ("a car", "a red car"), ("a vehicle", "an automobile"), ("street", "backyard")),
    Thing("bike", ("a bike", "a bicycle"), ("a mountain bike", "a cycle")),
    Thing("skateboard", ("a skateboard",), ("a board", "a skate deck")),
    Thing("surfboard", ("a surfboard",), ("a board", "a longboard")),
    Thing("ball", ("a ball", "a soccer ball"), ("a football", "a rubber ball")),
    Thing("frisbee", ("a frisbee",), ("a flying disc", "a plastic disc")),
    Thing("basketball", ("a basketball",), ("a ball", "the hoops ball")),
    Thing("book", ("a book", "a novel"), ("a paperback", "a storybook")),
    Thing("newspaper", ("a newspaper",), ("the paper", "the daily news")),
    Thing("coffee", ("coffee", "a cup of coffee"), ("an espresso", "a hot drink")),
    Thing("tea", ("tea", "a cup of tea"), ("a mug of tea", "herbal tea")),
    Thing("sandwich", ("a sandwich",), ("a sub", "a wrap")),
    Thing("ice_cream", ("an ice cream", "an ice cream cone"), ("a gelato", "a frozen treat")),
    Thing("pizza", ("pizza", "a slice of pizza"), ("some pizza", "a pizza slice")),
    Thing("apple", ("an apple",), ("a piece of fruit", "a green apple")),
    Thing("fence", ("a fence", "a wooden fence"), ("the fence", "a picket fence"), ("backyard", "garden")),
    Thing("wall", ("a wall", "the living room wall"), ("the walls", "an interior wall"), ("living_room",)),
    Thing("canvas", ("a canvas", "a picture on an easel"), ("an artwork", "a sketch")),
    Thing("barbell", ("a barbell", "heavy weights"), ("a weight bar", "some iron plates")),
    Thing("dumbbells", ("dumbbells", "a pair of dumbbells"), ("hand weights", "free weights")),
    Thing("sandcastle", ("a sandcastle",), ("a castle of sand", "a sand tower"), ("beach",)),
    Thing("snowman", ("a snowman",), ("a man made of snow", "a snow figure"), ("snow",)),
    Thing("birdhouse", ("a birdhouse",), ("a bird box", "a nesting box"), ("backyard", "garden")),
    Thing("fishing_rod", ("a fishing rod",), ("a fishing line", "a rod and reel")),
    Thing("flowers", ("flowers", "some roses"), ("the blossoms", "a flower bed")),
    Thing("tomatoes", ("tomato plants", "tomatoes"), ("vegetable plants", "the tomato vines")),
    Thing("lawn", ("the lawn",), ("the grass", "the yard")),
    Thing("birds", ("birds", "pigeons"), ("some ducks", "a flock of birds")),
    Thing("microphone", ("a microphone",), ("a mic", "the mike")),
    Thing("juggling_balls", ("three balls", "juggling balls"), ("some colourful balls", "a few balls")),
    Thing("laptop", ("a laptop", "a computer"), ("a notebook computer", "a laptop computer")),
    Thing("phone", ("a phone", "a cell phone"), ("a mobile", "a smartphone")),
    Thing("camera", ("a camera",), ("a digital camera", "a camera with a big lens")),
    Thing("floor", ("the floor",), ("the ground", "the tiles")),
    Thing("mat", ("a yoga mat", "a mat"), ("an exercise mat", "a rubber mat")),
    Thing("kite", ("a kite", "a colourful kite"), ("a paper kite", "a kite on a string")),
    Thing("cake", ("a cake", "a chocolate cake"), ("a birthday cake", "a sponge cake")),
    Thing("cookies", ("cookies", "biscuits"), ("some cookies", "a tray of biscuits")),
    Thing("snow", ("snow", "the snowy path"), ("the snow", "a snowdrift")),
    Thing("tree", ("a tree", "a tall tree"), ("an oak tree", "the branches of a tree"), ("park", "garden", "backyard")),
    Thing("rock_wall", ("a climbing wall", "a rock wall"), ("a bouldering wall", "the handholds on a wall"),
          ("gym", "mountain")),
)

PLACES: tuple[Place, ...] = (
    Place("beach", ("on the beach", "on a sandy beach", "along the shore"),
          ("by the sea", "at the seaside", "on the sand", "near the ocean"),
          ("waves roll onto an empty beach", "the camera pans over the sand and the sea")),
    Place("park", ("in a park", "in a city park"), ("on the grass in a park", "at the park", "in a green park"),
          ("trees sway in an empty park", "a view of a park with benches and paths")),
    Place("kitchen", ("in a kitchen", "in a small kitchen"), ("by the stove", "in the kitchen at home",
                                                             "at the kitchen counter"),
          ("an empty kitchen counter with pots and pans", "a close view of a kitchen sink and cupboards")),
    Place("living_room", ("in a living room", "in a cosy living room"), ("at home on the sofa", "in the lounge",
                                                                        "inside a house"),
          ("an empty living room with a sofa and a lamp", "a view of a quiet lounge")),
    Place("street", ("on a city street", "on the sidewalk"), ("downtown", "on a busy road", "in the town centre"),
          ("cars drive along a busy street", "a view of shops along a city street")),
    Place("backyard", ("in a backyard", "in the yard behind a house"), ("behind the house", "on the back lawn",
                                                                        "in the garden of a house"),
          ("an empty backyard with a fence", "a view of a backyard and a patio")),
    Place("gym", ("in a gym", "in a fitness center"), ("at the gym", "in a workout room", "in a sports hall"),
          ("rows of machines in an empty gym", "a view of a quiet fitness room")),
    Place("lake", ("by a lake", "on the shore of a lake"), ("at the lakeside", "near a pond", "by the water"),
          ("calm water of a lake under the sky", "a view across a quiet lake")),
    Place("snow", ("on a snowy hill", "on a snowy mountain"), ("in the snow", "on a ski slope", "in the mountains in "
                                                               "winter"),
          ("snow covers an empty hillside", "a view of snowy mountains")),
    Place("stage", ("on a stage", "on a concert stage"), ("at a concert", "in front of an audience", "at a show"),
          ("an empty stage under bright lights", "a view of a concert stage and speakers")),
    Place("garden", ("in a garden", "in a flower garden"), ("among the plants", "in a vegetable patch", "outdoors "
                                                            "among flower beds"),
          ("flowers and bushes in a quiet garden", "a view of a garden path")),
    Place("cafe", ("in a cafe", "in a coffee shop"), ("at a coffee bar", "in a small restaurant", "at a bistro"),
          ("empty tables in a quiet cafe", "a view of a coffee shop counter")),
    Place("mountain", ("on a mountain trail", "on a rocky mountain"), ("in the hills", "on a hiking path",
                                                                       "high in the mountains"),
          ("a rocky mountain ridge under clouds", "a view of a valley from a mountain path")),
)

ACTIONS: tuple[Action, ...] = (
    Action("walk", (("walks {o}", "walking {o}"), ("takes {o} for a walk", "taking {o} for a walk")),
           (("strolls with {o}", "strolling with {o}"), ("goes for a walk with {o}", "going for a walk with {o}"),
            ("leads {o} on a leash", "leading {o} on a leash")),
           ("dog",), ("beach", "park", "street", "snow", "mountain"), (8, 40)),
    Action("play_music", (("plays {o}", "playing {o}"), ("performs a song on {o}", "performing a song on {o}")),
           (("makes music with {o}", "making music with {o}"), ("practises on {o}", "practising on {o}"),
            ("jams on {o}", "jamming on {o}")),
           ("guitar", "violin", "drums", "piano"), ("stage", "living_room", "park", "street", "beach"), (10, 60)),
    Action("sing", (("sings into {o}", "singing into {o}"), ("sings a song into {o}", "singing a song into {o}")),
           (("belts out a tune with {o}", "belting out a tune with {o}"), ("does karaoke with {o}",
                                                                            "doing karaoke with {o}")),
           ("microphone",), ("stage", "living_room", "street"), (10, 50)),
    Action("cook", (("cooks {o}", "cooking {o}"), ("stirs {o} in a pan", "stirring {o} in a pan")),
           (("makes {o}", "making {o}"), ("prepares a meal of {o}", "preparing a meal of {o}"),
            ("fries up {o}", "frying up {o}")),
           ("pasta", "eggs", "soup", "pancakes", "burgers"), ("kitchen", "backyard", "cafe"), (15, 70)),
    Action("chop", (("chops {o}", "chopping {o}"), ("cuts {o} on a board", "cutting {o} on a board")),
           (("slices {o}", "slicing {o}"), ("dices {o} with a knife", "dicing {o} with a knife")),
           ("vegetables", "onions", "bread"), ("kitchen", "cafe"), (6, 30)),
    Action("bake", (("bakes {o}", "baking {o}"), ("takes {o} out of the oven", "taking {o} out of the oven")),
           (("makes {o} in the oven", "making {o} in the oven"), ("decorates {o}", "decorating {o}")),
           ("cake", "cookies", "bread"), ("kitchen",), (10, 50)),
    Action("wash", (("washes {o}", "washing {o}"), ("scrubs {o}", "scrubbing {o}")),
           (("cleans {o}", "cleaning {o}"), ("rinses {o} with water", "rinsing {o} with water")),
           ("dishes", "car", "dog"), ("kitchen", "cafe", "street", "backyard"), (10, 50)),
    Action("ride", (("rides {o}", "riding {o}"), ("rides {o} around", "riding {o} around")),
           (("goes for a ride on {o}", "going for a ride on {o}"), ("travels on {o}", "travelling on {o}")),
           ("bike", "horse", "skateboard"), ("park", "street", "beach", "mountain"), (8, 45)),
    Action("surf", (("surfs on {o}", "surfing on {o}"), ("rides a wave on {o}", "riding a wave on {o}")),
           (("catches a wave on {o}", "catching a wave on {o}"), ("balances on {o} in the water",
                                                                   "balancing on {o} in the water")),
           ("surfboard",), ("beach",), (6, 30)),
    Action("swim", (("swims", "swimming"), ("swims laps", "swimming laps")),
           (("takes a swim", "taking a swim"), ("paddles through the water", "paddling through the water")),
           (), ("beach", "lake"), (8, 40)),
    Action("throw", (("throws {o}", "throwing {o}"), ("tosses {o} into the air", "tossing {o} into the air")),
           (("hurls {o}", "hurling {o}"), ("plays catch with {o}", "playing catch with {o}")),
           ("ball", "frisbee"), ("park", "beach", "backyard"), (5, 25)),
    Action("kick", (("kicks {o}", "kicking {o}"), ("dribbles {o}", "dribbling {o}")),
           (("plays football with {o}", "playing football with {o}"), ("passes {o} with the feet",
                                                                        "passing {o} with the feet")),
           ("ball",), ("park", "street", "beach", "backyard"), (5, 30)),
    Action("shoot_hoops", (("shoots {o} at a hoop", "shooting {o} at a hoop"), ("bounces {o}", "bouncing {o}")),
           (("plays basketball with {o}", "playing basketball with {o}"), ("dunks {o}", "dunking {o}")),
           ("basketball",), ("gym", "park", "street", "backyard"), (8, 40)),
    Action("read", (("reads {o}", "reading {o}"), ("flips through {o}", "flipping through {o}")),
           (("looks through {o}", "looking through {o}"), ("studies {o}", "studying {o}")),
           ("book", "newspaper"), ("living_room", "park", "cafe", "beach", "garden"), (10, 60)),
    Action("drink", (("drinks {o}", "drinking {o}"), ("sips {o}", "sipping {o}")),
           (("has {o}", "having {o}"), ("enjoys {o}", "enjoying {o}")),
           ("coffee", "tea"), ("cafe", "kitchen", "living_room", "garden"), (4, 20)),
    Action("eat", (("eats {o}", "eating {o}"), ("takes a bite of {o}", "taking a bite of {o}")),
           (("snacks on {o}", "snacking on {o}"), ("munches on {o}", "munching on {o}")),
           ("sandwich", "ice_cream", "pizza", "apple"), ("cafe", "park", "beach", "kitchen", "living_room"), (5, 30)),
    Action("paint", (("paints {o}", "painting {o}"), ("brushes paint onto {o}", "brushing paint onto {o}")),
           (("puts a coat of paint on {o}", "putting a coat of paint on {o}"), ("colours {o} with a brush",
                                                                                "colouring {o} with a brush")),
           ("fence", "wall", "canvas"), ("backyard", "living_room", "garden", "park"), (15, 70)),
    Action("dance", (("dances", "dancing"), ("dances to music", "dancing to music")),
           (("moves to the beat", "moving to the beat"), ("does a dance routine", "doing a dance routine")),
           (), ("stage", "living_room", "street", "beach", "park"), (8, 50)),
    Action("lift", (("lifts {o}", "lifting {o}"), ("does curls with {o}", "doing curls with {o}")),
           (("works out with {o}", "working out with {o}"), ("trains with {o}", "training with {o}")),
           ("barbell", "dumbbells"), ("gym",), (8, 40)),
    Action("jog", (("jogs", "jogging"), ("runs at a steady pace", "running at a steady pace")),
           (("sprints", "sprinting"), ("goes for a jog", "going for a jog")),
           (), ("park", "beach", "street", "mountain"), (6, 40)),
    Action("ski", (("skis down the slope", "skiing down the slope"), ("skis between the trees",
                                                                     "skiing between the trees")),
           (("glides down the mountain on skis", "gliding down the mountain on skis"), ("goes skiing",
                                                                                        "going skiing")),
           (), ("snow",), (6, 40)),
    Action("build", (("builds {o}", "building {o}"), ("puts together {o}", "putting together {o}")),
           (("makes {o}", "making {o}"), ("works on {o}", "working on {o}")),
           ("sandcastle", "snowman", "birdhouse"), ("beach", "snow", "backyard", "garden"), (15, 70)),
    Action("fish", (("casts {o} into the water", "casting {o} into the water"), ("fishes with {o}",
                                                                                "fishing with {o}")),
           (("goes fishing with {o}", "going fishing with {o}"), ("reels in {o}", "reeling in {o}")),
           ("fishing_rod",), ("lake", "beach"), (10, 60)),
    Action("water", (("waters {o}", "watering {o}"), ("sprays water on {o}", "spraying water on {o}")),
           (("gives water to {o}", "giving water to {o}"), ("hoses down {o}", "hosing down {o}")),
           ("flowers", "tomatoes", "lawn"), ("garden", "backyard"), (5, 30)),
    Action("plant", (("plants {o}", "planting {o}"), ("digs a hole for {o}", "digging a hole for {o}")),
           (("puts {o} in the soil", "putting {o} in the soil"), ("sets {o} into the ground",
                                                                  "setting {o} into the ground")),
           ("flowers", "tomatoes"), ("garden", "backyard"), (10, 50)),
    Action("mow", (("mows {o}", "mowing {o}"), ("pushes a lawnmower over {o}", "pushing a lawnmower over {o}")),
           (("cuts {o}", "cutting {o}"), ("trims {o} with a mower", "trimming {o} with a mower")),
           ("lawn",), ("backyard", "garden", "park"), (10, 60)),
    Action("pet", (("plays with {o}", "playing with {o}"), ("pets {o}", "petting {o}")),
           (("strokes {o}", "stroking {o}"), ("cuddles {o}", "cuddling {o}")),
           ("dog", "cat", "horse"), ("living_room", "backyard", "park", "garden"), (5, 30)),
    Action("feed", (("feeds {o}", "feeding {o}"), ("gives food to {o}", "giving food to {o}")),
           (("hands treats to {o}", "handing treats to {o}"), ("puts out food for {o}", "putting out food for {o}")),
           ("dog", "cat", "birds", "horse"), ("kitchen", "backyard", "park", "lake", "living_room"), (5, 25)),
    Action("juggle", (("juggles {o}", "juggling {o}"), ("keeps {o} in the air", "keeping {o} in the air")),
           (("does tricks with {o}", "doing tricks with {o}"), ("performs a juggling act with {o}",
                                                                "performing a juggling act with {o}")),
           ("juggling_balls",), ("street", "park", "stage"), (6, 30)),
    Action("type", (("types on {o}", "typing on {o}"), ("works on {o}", "working on {o}")),
           (("uses {o}", "using {o}"), ("writes an email on {o}", "writing an email on {o}")),
           ("laptop",), ("cafe", "living_room"), (10, 60)),
    Action("call", (("talks on {o}", "talking on {o}"), ("answers {o}", "answering {o}")),
           (("makes a call on {o}", "making a call on {o}"), ("chats on {o}", "chatting on {o}")),
           ("phone",), ("street", "cafe", "park", "living_room"), (5, 40)),
    Action("photograph", (("takes photos with {o}", "taking photos with {o}"), ("points {o} at the view",
                                                                               "pointing {o} at the view")),
           (("snaps pictures with {o}", "snapping pictures with {o}"), ("films the scenery with {o}",
                                                                        "filming the scenery with {o}")),
           ("camera", "phone"), ("beach", "park", "street", "mountain", "lake", "snow"), (4, 25)),
    Action("sweep", (("sweeps {o}", "sweeping {o}"), ("mops {o}", "mopping {o}")),
           (("cleans {o} with a broom", "cleaning {o} with a broom"), ("tidies up {o}", "tidying up {o}")),
           ("floor",), ("kitchen", "living_room", "cafe"), (6, 35)),
    Action("yoga", (("does yoga on {o}", "doing yoga on {o}"), ("stretches on {o}", "stretching on {o}")),
           (("holds a yoga pose on {o}", "holding a yoga pose on {o}"), ("practises yoga on {o}",
                                                                        "practising yoga on {o}")),
           ("mat",), ("gym", "beach", "park", "living_room"), (10, 60)),
    Action("push_ups", (("does push-ups", "doing push-ups"), ("does sit-ups", "doing sit-ups")),
           (("exercises on the floor", "exercising on the floor"), ("works out", "working out")),
           (), ("gym", "park", "living_room"), (5, 30)),
    Action("fly_kite", (("flies {o}", "flying {o}"), ("holds up {o} in the wind", "holding up {o} in the wind")),
           (("lets {o} soar in the sky", "letting {o} soar in the sky"), ("pulls on the string of {o}",
                                                                          "pulling on the string of {o}")),
           ("kite",), ("beach", "park", "mountain"), (8, 45)),
    Action("shovel", (("shovels {o}", "shovelling {o}"), ("clears {o} with a shovel", "clearing {o} with a shovel")),
           (("digs through {o}", "digging through {o}"), ("scoops up {o}", "scooping up {o}")),
           ("snow",), ("snow", "street"), (8, 40)),
    Action("climb", (("climbs {o}", "climbing {o}"), ("scales {o}", "scaling {o}")),
           (("heads up {o}", "heading up {o}"), ("goes up {o}", "going up {o}")),
           ("tree", "rock_wall"), ("park", "garden", "backyard", "gym", "mountain"), (8, 50)),
    Action("hike", (("hikes up the trail", "hiking up the trail"), ("walks uphill with a backpack",
                                                                    "walking uphill with a backpack")),
           (("treks through the hills", "trekking through the hills"), ("goes hiking", "going hiking")),
           (), ("mountain", "snow"), (10, 60)),
)
