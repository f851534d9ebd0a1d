"""A small retrieval sample an int8 variant is checked on when it is built (`vectune.embed.int8_check`).

Written for vectune, independent of the calibration texts (`vectune.embed._calibration`: other
subjects, other sentences), so the check does not score the variant on what set its ranges.
Sixteen questions, each with the passage that answers it and a near miss on the same subject
that does not, so the ranking has to separate close texts. It is small: it catches a broken
variant (a wrong scale, a saturated kernel), not a loss of a few thousandths of nDCG@10; that
is measured on a run's own validation queries (`check_int8` with them).
"""

from __future__ import annotations

#: (question, the passage that answers it, a passage on the same subject that does not)
TOPICS = (
    ("how do bees communicate where flowers are",
     "Honey bee foragers perform a waggle dance on the comb: the angle of the run relative to vertical "
     "gives the direction of the food source relative to the sun, and its duration encodes the distance.",
     "Bee colonies overwinter by clustering around the queen and shivering their flight muscles, keeping "
     "the centre of the cluster near 35 degrees Celsius while the hive outside is far colder."),
    ("what makes concrete harden",
     "Concrete hardens through hydration: water reacts with the calcium silicates in cement to form "
     "calcium silicate hydrate crystals that bind sand and gravel together, gaining strength for weeks.",
     "Reinforced concrete combines concrete, which resists compression well, with embedded steel bars, "
     "which carry the tension that would otherwise crack a beam under load."),
    ("why is the sky blue during the day",
     "Sunlight is scattered by the molecules of the air, and short blue wavelengths are scattered far "
     "more strongly than red ones (Rayleigh scattering), so blue light reaches the eye from every direction.",
     "Rainbows form when sunlight is refracted, reflected inside raindrops and refracted again, which "
     "separates the colours because each wavelength bends by a slightly different angle."),
    ("side effects of long-term corticosteroid use",
     "Taken for months, oral corticosteroids can thin the bones, raise blood sugar, cause weight gain and "
     "cataracts, and suppress the adrenal glands, so doses are tapered rather than stopped abruptly.",
     "Inhaled corticosteroids reduce inflammation in the airways and are the main preventive treatment "
     "for persistent asthma, usually taken every day even when symptoms are absent."),
    ("how does a refrigerator keep food cold",
     "A refrigerator pumps heat out: a refrigerant evaporates inside the cabinet, absorbing heat, then a "
     "compressor raises its pressure so it condenses in the coils at the back and releases that heat.",
     "Food keeps longer in the fridge because low temperatures slow the growth of most bacteria and moulds, "
     "although some, such as Listeria, can still multiply slowly below 5 degrees."),
    ("what triggers an asthma attack",
     "Asthma attacks are commonly set off by allergens such as pollen and dust mites, respiratory "
     "infections, cold air, exercise and tobacco smoke, which make inflamed airways narrow suddenly.",
     "Spirometry measures how much air a person can blow out in one second; a low value that improves "
     "after a bronchodilator supports a diagnosis of asthma."),
    ("how are tides caused by the moon",
     "The Moon's gravity pulls more strongly on the side of the Earth facing it than on the far side, "
     "raising two bulges of ocean water; as the Earth rotates, coasts pass through them twice a day.",
     "The Moon always shows the same face to the Earth because tidal forces long ago slowed its rotation "
     "until one turn on its axis took exactly as long as one orbit."),
    ("what is the function of red blood cells",
     "Red blood cells carry oxygen from the lungs to the tissues, bound to the iron-containing protein "
     "haemoglobin, and bring part of the carbon dioxide back to the lungs to be exhaled.",
     "Blood groups A, B, AB and O are defined by antigens on the surface of red blood cells; a transfusion "
     "of an incompatible group triggers antibodies that destroy the donated cells."),
    ("how does compound interest work",
     "With compound interest, the interest earned in each period is added to the balance, so the next "
     "period's interest is calculated on a larger amount and savings grow exponentially over time.",
     "A mortgage is a loan secured on a property; if the borrower stops repaying, the lender can take "
     "possession of the house and sell it to recover what is owed."),
    ("why do we get fever when sick",
     "Fever is raised deliberately by the brain's hypothalamus in response to signalling molecules released "
     "during infection; higher temperatures slow many pathogens and speed up parts of the immune response.",
     "Heat stroke occurs when the body cannot shed heat fast enough in hot weather or during exertion, and "
     "core temperature rises above 40 degrees, which is a medical emergency."),
    ("how do noise cancelling headphones work",
     "Noise cancelling headphones record outside sound with small microphones and play the same wave "
     "inverted, so the two cancel out in the ear, which works best for steady low-frequency noise.",
     "Hearing loss from loud noise is caused by damage to the hair cells of the inner ear, which do not "
     "grow back, so protection is advised above about 85 decibels for long periods."),
    ("what causes earthquakes",
     "Earthquakes happen when stress built up along a fault is released suddenly and the rocks on either "
     "side slip, sending seismic waves through the ground; most occur at the edges of tectonic plates.",
     "Buildings in seismic zones are designed with flexible frames, base isolators and cross bracing so "
     "that they sway without collapsing when the ground shakes."),
    ("how does a vaccine cold chain work",
     "Many vaccines must be kept between 2 and 8 degrees Celsius from the factory to the clinic; "
     "refrigerated trucks, cold boxes and temperature logs keep this cold chain unbroken.",
     "Herd immunity protects people who cannot be vaccinated when enough of the population is immune that "
     "a pathogen cannot find enough susceptible hosts to keep spreading."),
    ("why do onions make you cry",
     "Cutting an onion breaks its cells and releases enzymes that turn sulphur compounds into a volatile "
     "irritant, syn-propanethial-S-oxide, which reaches the eyes and stimulates tear glands.",
     "Caramelising onions slowly over low heat breaks down their sugars and develops sweet, nutty flavours "
     "through a series of browning reactions."),
    ("how do bats find insects in the dark",
     "Bats hunt by echolocation: they emit high-frequency calls and listen to the echoes, judging the "
     "distance, size and movement of insects from the delay and changes in the returning sound.",
     "Many bat species hibernate in caves during winter, lowering their body temperature and heart rate to "
     "survive months without food."),
    ("what limits battery life in phones",
     "Lithium-ion batteries lose capacity with each charge cycle as side reactions consume lithium and "
     "thicken a layer on the electrodes, and heat and long periods at full charge speed this up.",
     "Fast chargers raise the voltage or current supplied to a phone so the battery fills in less time, "
     "negotiating the level with the device through the USB Power Delivery protocol."),
)


def check_sample() -> tuple[dict[str, str], dict[str, str], dict[str, dict[str, int]]]:
    """(queries by id, documents by id, qrels): each question's answer is relevant, its near miss is not."""
    queries = {f"q{i}": q for i, (q, _, _) in enumerate(TOPICS)}
    documents = {}
    for i, (_, answer, near) in enumerate(TOPICS):
        documents[f"d{i}a"] = answer
        documents[f"d{i}b"] = near
    qrels = {f"q{i}": {f"d{i}a": 1} for i in range(len(TOPICS))}
    return queries, documents, qrels
